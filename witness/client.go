package witness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/etbproject/etb/ledger"
)

// maxResponseBytes bounds a witness response body.
const maxResponseBytes = 64 << 10

// ErrConflict is matched (errors.Is) by the *ConflictError AddCheckpoint
// returns when the witness answers 409 Conflict.
var ErrConflict = errors.New("witness: conflict")

// ConflictError is a 409 Conflict answer: the witness's latest cosigned
// size for the log is Size, not the old size sent.
type ConflictError struct {
	URL  string
	Size uint64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("witness %s: conflict: witness has size %d", e.URL, e.Size)
}

// Is reports whether target is ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// StatusError is any other non-200 answer of a witness.
type StatusError struct {
	URL  string
	Code int
	Body string // the first bytes of the response body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("witness %s: HTTP %d: %s", e.URL, e.Code, e.Body)
}

// Client talks to one witness. URL is its submission prefix; HTTP nil means
// http.DefaultClient.
type Client struct {
	URL  string
	HTTP *http.Client
}

// AddCheckpoint submits checkpoint with the consistency proof from oldSize
// and returns the witness's cosignature lines, unverified but checked to be
// note signature lines. A 409 answer is a *ConflictError holding the
// witness's size.
func (c *Client) AddCheckpoint(ctx context.Context, oldSize uint64, proof [][]byte, checkpoint []byte) ([]byte, error) {
	if len(proof) > MaxProofLines {
		return nil, fmt.Errorf("witness %s: %d proof hashes, limit %d", c.URL, len(proof), MaxProofLines)
	}
	url := strings.TrimSuffix(c.URL, "/") + "/add-checkpoint"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(MarshalAddCheckpoint(oldSize, proof, checkpoint)))
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", c.URL, err)
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("witness %s: reading response: %w", c.URL, err)
	}
	if len(body) > maxResponseBytes {
		return nil, fmt.Errorf("witness %s: response exceeds %d bytes", c.URL, maxResponseBytes)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if err := checkSigLines(body); err != nil {
			return nil, fmt.Errorf("witness %s: %w", c.URL, err)
		}
		return body, nil
	case http.StatusConflict:
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		s, ok := strings.CutSuffix(string(body), "\n")
		if mt != SizeContentType || !ok {
			return nil, &StatusError{URL: c.URL, Code: resp.StatusCode, Body: truncate(string(body))}
		}
		size, err := ledger.ParseDecimal(s)
		if err != nil {
			return nil, fmt.Errorf("witness %s: 409 with size: %w", c.URL, err)
		}
		return nil, &ConflictError{URL: c.URL, Size: size}
	default:
		return nil, &StatusError{URL: c.URL, Code: resp.StatusCode, Body: truncate(strings.TrimSpace(string(body)))}
	}
}

// checkSigLines reports whether b is one or more note signature lines, each
// "— <name> <base64>\n".
func checkSigLines(b []byte) error {
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return errors.New("cosignature response is empty or does not end in a newline")
	}
	for _, l := range strings.SplitAfter(string(b[:len(b)-1]), "\n") {
		l = strings.TrimSuffix(l, "\n")
		rest, ok := strings.CutPrefix(l, "— ")
		name, sig, ok2 := strings.Cut(rest, " ")
		if !ok || !ok2 || checkName(name) != nil || sig == "" || strings.ContainsAny(sig, " \t") {
			return fmt.Errorf("cosignature response line %q is not a note signature line", truncate(l))
		}
	}
	return nil
}
