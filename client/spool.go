package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The spool keeps reports the gateway could not take (it was unreachable):
// one file per event in StateDir/spool, named so that lexical order is the
// order they were made in. FlushSpool delivers them in that order.

// spooled is one undelivered report.
type spooled struct {
	Execution string          `json:"execution"`
	Type      string          `json:"type"`
	Body      json.RawMessage `json:"body"`
}

func (c *Client) spoolDir() string { return filepath.Join(c.opt.StateDir, "spool") }

// spool writes one undelivered report durably.
func (c *Client) spool(execution, typ string, body any) error {
	if c.opt.StateDir == "" {
		return errors.New("client: no StateDir to spool into")
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	b, err := json.Marshal(spooled{Execution: execution, Type: typ, Body: raw})
	if err != nil {
		return err
	}
	dir := c.spoolDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("client: spool: %w", err)
	}
	name := fmt.Sprintf("%020d-%s-%s.json", time.Now().UnixNano(), execution, typ)
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("client: spool: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("client: spool: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("client: spool: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("client: spool: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Spooled returns the names of the reports waiting in the spool.
func (c *Client) Spooled() ([]string, error) {
	if c.opt.StateDir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(c.spoolDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("client: spool: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".json") && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

// FlushSpool delivers spooled reports in order and removes each one the
// gateway accepted or refused for good (a 4xx other than 401/403: the
// execution already ended, for example). It stops at the first report the
// gateway cannot take now, keeping it and the rest, and returns how many
// it delivered.
func (c *Client) FlushSpool(ctx context.Context) (int, error) {
	names, err := c.Spooled()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		path := filepath.Join(c.spoolDir(), name)
		b, err := os.ReadFile(path)
		if err != nil {
			return n, fmt.Errorf("client: spool: %w", err)
		}
		var s spooled
		if err := json.Unmarshal(b, &s); err != nil {
			return n, fmt.Errorf("client: spool %s: %w", name, err)
		}
		repErr := c.Report(ctx, s.Execution, s.Type, s.Body)
		var ge *Error
		if repErr != nil && !(errors.As(repErr, &ge) && ge.Status/100 == 4 && ge.Status != http.StatusUnauthorized && ge.Status != http.StatusForbidden) {
			return n, repErr
		}
		if err := os.Remove(path); err != nil {
			return n, fmt.Errorf("client: spool: %w", err)
		}
		if repErr == nil {
			n++
		}
	}
	return n, nil
}
