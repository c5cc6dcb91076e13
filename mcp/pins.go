package mcp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PinsVersion is the version of the pin file format.
const PinsVersion = "etb.mcp-pins/v1"

// PinSet is a pin file: the ToolHash of every tool of one upstream server
// (by the name it announces), as first seen or as reviewed.
type PinSet struct {
	V      string            `json:"v"`
	Server string            `json:"server"`
	Tools  map[string]string `json:"tools"`
}

// ReadPins reads a pin file strictly (unknown fields, another version, or
// a pin that is not "sha256:" and 64 hex digits are errors). A missing
// file is an error wrapping os.ErrNotExist.
func ReadPins(path string) (*PinSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mcp: pin file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var ps PinSet
	if err := dec.Decode(&ps); err != nil {
		return nil, fmt.Errorf("mcp: pin file %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("mcp: pin file %s: trailing data", path)
	}
	if ps.V != PinsVersion || ps.Server == "" {
		return nil, fmt.Errorf("mcp: pin file %s: version %q, server %q; want %s and a server name", path, ps.V, ps.Server, PinsVersion)
	}
	for name, h := range ps.Tools {
		hex, ok := strings.CutPrefix(h, "sha256:")
		if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
			return nil, fmt.Errorf("mcp: pin file %s: tool %q: pin %.80q is not sha256:HEX", path, name, h)
		}
	}
	if ps.Tools == nil {
		ps.Tools = map[string]string{}
	}
	return &ps, nil
}

// WritePins writes ps to path (mode 0644), atomically.
func WritePins(path string, ps *PinSet) error {
	b, err := json.MarshalIndent(ps, "", "  ")
	if err != nil {
		return fmt.Errorf("mcp: pin file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pins-*")
	if err != nil {
		return fmt.Errorf("mcp: pin file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("mcp: write pin file %s: %w", path, err)
	}
	return nil
}
