package tlogclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

// InconsistencyError is proof that a log signed two checkpoints that cannot
// both be views of one append-only log: either two different roots at the
// same size, or a served consistency proof that verifies against Newer's
// root with RootAtOlder as the root at Older's size, while Older commits to
// another root. Anyone holding the log key can recheck it with Check.
type InconsistencyError struct {
	Older, Newer ledger.Checkpoint
	// Proof and RootAtOlder are empty when the sizes are equal.
	Proof       [][]byte // consistency proof from Older.Size to Newer.Size
	RootAtOlder []byte   // the root at Older.Size that Newer commits to
}

func (e *InconsistencyError) Error() string {
	if e.Older.Size == e.Newer.Size {
		return fmt.Sprintf("tlogclient: log %q signed two checkpoints of size %d with different roots %x and %x",
			e.Older.Origin, e.Older.Size, e.Older.Root, e.Newer.Root)
	}
	return fmt.Sprintf("tlogclient: log %q checkpoints of sizes %d and %d are inconsistent: the newer tree has root %x at size %d, the older checkpoint says %x",
		e.Older.Origin, e.Older.Size, e.Newer.Size, e.RootAtOlder, e.Older.Size, e.Older.Root)
}

// Evidence returns a printable account of the inconsistency: both signed
// checkpoints verbatim and, if sizes differ, the consistency proof and the
// root it implies at the older size.
func (e *InconsistencyError) Evidence() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n\nolder checkpoint (size %d):\n%s\nnewer checkpoint (size %d):\n%s",
		e.Error(), e.Older.Size, e.Older.Note, e.Newer.Size, e.Newer.Note)
	if e.Older.Size != e.Newer.Size {
		fmt.Fprintf(&b, "\nroot of the newer tree at size %d: %s\nconsistency proof %d -> %d:\n",
			e.Older.Size, base64.StdEncoding.EncodeToString(e.RootAtOlder), e.Older.Size, e.Newer.Size)
		for _, h := range e.Proof {
			fmt.Fprintf(&b, "%s\n", base64.StdEncoding.EncodeToString(h))
		}
	}
	return b.Bytes()
}

// Check re-verifies the evidence offline with the log's verifier: both
// checkpoints are signed by v, and they are provably inconsistent.
func (e *InconsistencyError) Check(v note.Verifier) error {
	older, err := ledger.ParseCheckpoint(e.Older.Note, v)
	if err != nil {
		return err
	}
	newer, err := ledger.ParseCheckpoint(e.Newer.Note, v)
	if err != nil {
		return err
	}
	if older.Size == newer.Size {
		if bytes.Equal(older.Root, newer.Root) {
			return errors.New("tlogclient: evidence checkpoints have the same size and root")
		}
		return nil
	}
	if older.Size > newer.Size {
		return errors.New("tlogclient: evidence checkpoints are out of order")
	}
	if bytes.Equal(e.RootAtOlder, older.Root) {
		return errors.New("tlogclient: evidence root at the older size equals the older checkpoint's root")
	}
	if older.Size == 0 {
		if bytes.Equal(older.Root, hasher.EmptyRoot()) {
			return errors.New("tlogclient: evidence older checkpoint is the empty tree")
		}
		return nil
	}
	if err := proof.VerifyConsistency(hasher, older.Size, newer.Size, e.Proof, e.RootAtOlder, newer.Root); err != nil {
		return fmt.Errorf("tlogclient: evidence proof does not bind the newer checkpoint: %w", err)
	}
	return nil
}

// TileError says the served tiles do not commit to a signed checkpoint: the
// log (or something between) serves bad data, but that alone is not proof
// of a fork.
type TileError struct {
	Checkpoint ledger.Checkpoint
	Err        error
}

func (e *TileError) Error() string {
	return fmt.Sprintf("tlogclient: tiles served for %q at size %d do not match its checkpoint: %v", e.Checkpoint.Origin, e.Checkpoint.Size, e.Err)
}

func (e *TileError) Unwrap() error { return e.Err }

// CheckConsistency proves that verified checkpoints a and b of this log (in
// either order) are views of one append-only log, computing the
// consistency proof from the tiles of the larger tree. It returns nil if
// they are, an *InconsistencyError if the tiles prove they are not, a
// *TileError if the tiles do not commit to the larger checkpoint, and a
// fetch error otherwise.
func (c *Client) CheckConsistency(ctx context.Context, a, b ledger.Checkpoint) error {
	if a.Origin != b.Origin {
		return fmt.Errorf("tlogclient: checkpoints of different logs %q and %q", a.Origin, b.Origin)
	}
	older, newer := a, b
	if older.Size > newer.Size {
		older, newer = newer, older
	}
	if older.Size == newer.Size {
		if !bytes.Equal(older.Root, newer.Root) {
			return &InconsistencyError{Older: older, Newer: newer}
		}
		return nil
	}
	if older.Size == 0 {
		if !bytes.Equal(older.Root, hasher.EmptyRoot()) {
			return &InconsistencyError{Older: older, Newer: newer, RootAtOlder: hasher.EmptyRoot()}
		}
		return nil
	}
	ts := c.tilesAt(newer.Size)
	nodes, err := proof.Consistency(older.Size, newer.Size)
	if err != nil {
		return fmt.Errorf("tlogclient: consistency proof from %d to %d: %w", older.Size, newer.Size, err)
	}
	hashes, err := ts.nodes(ctx, nodes.IDs)
	if err != nil {
		return err
	}
	p, err := nodes.Rehash(hashes, hasher.HashChildren)
	if err != nil {
		return err
	}
	if ledger.VerifyConsistency(older, newer, p) == nil {
		return nil
	}
	// Which side failed? If the tiles yield a root at the older size that
	// the proof binds to the newer root, the tiles are what the newer
	// checkpoint commits to, and the older checkpoint disagrees with them.
	rootAtOlder, err := ts.root(ctx, older.Size)
	if err != nil {
		return err
	}
	if err := proof.VerifyConsistency(hasher, older.Size, newer.Size, p, rootAtOlder, newer.Root); err != nil {
		return &TileError{Checkpoint: newer, Err: err}
	}
	return &InconsistencyError{Older: older, Newer: newer, Proof: p, RootAtOlder: rootAtOlder}
}

// VerifySince verifies, offline, a consistency proof between two verified
// checkpoints of one log given in either order (for `etb verify --since`:
// the checkpoint seen earlier may be older or newer than the bundle's).
// proofHashes go from the smaller size to the larger.
func VerifySince(seen, cp ledger.Checkpoint, proofHashes [][]byte) error {
	older, newer := seen, cp
	if older.Size > newer.Size {
		older, newer = newer, older
	}
	return ledger.VerifyConsistency(older, newer, proofHashes)
}

// Follow polls the log's checkpoint every interval until ctx ends. Each
// checkpoint larger than the last one seen is verified with c.Verifier,
// proved consistent with it (CheckConsistency) and passed to seen; prev, if
// not nil, is the checkpoint note to start from. A checkpoint smaller than
// the last is checked for consistency if the tiles allow, and never replaces
// it. Follow returns the first *InconsistencyError, *TileError, signature
// failure or error from seen; failures to fetch are passed to transient (if
// not nil) and retried at the next poll. It returns ctx's error when ctx
// ends.
func (c *Client) Follow(ctx context.Context, prev []byte, interval time.Duration, seen func(ledger.Checkpoint) error, transient func(error)) error {
	if c.Verifier == nil {
		return errors.New("tlogclient: Follow needs the log's verifier")
	}
	if interval <= 0 {
		return fmt.Errorf("tlogclient: poll interval %v, want > 0", interval)
	}
	var last *ledger.Checkpoint
	if prev != nil {
		cp, err := ledger.ParseCheckpoint(prev, c.Verifier)
		if err != nil {
			return fmt.Errorf("tlogclient: previous checkpoint: %w", err)
		}
		last = &cp
	}
	report := func(err error) {
		if transient != nil {
			transient(err)
		}
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		t.Reset(interval)
		n, err := c.FetchCheckpoint(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			report(err)
			continue
		}
		cp, err := ledger.ParseCheckpoint(n, c.Verifier)
		if err != nil {
			return fmt.Errorf("tlogclient: served checkpoint: %w", err)
		}
		if last == nil {
			if err := seen(cp); err != nil {
				return err
			}
			last = &cp
			continue
		}
		if cp.Size == last.Size && bytes.Equal(cp.Root, last.Root) {
			continue
		}
		err = c.CheckConsistency(ctx, *last, cp)
		var inc *InconsistencyError
		var te *TileError
		var se *StatusError
		switch {
		case errors.As(err, &inc), errors.As(err, &te):
			return err
		case cp.Size < last.Size && errors.As(err, &se) && se.Code == http.StatusNotFound:
			// The log serves an older view and no longer (or not yet)
			// the tiles of ours: report it, keep ours, and recheck.
			report(fmt.Errorf("tlogclient: log serves checkpoint size %d, older than the %d seen: %w", cp.Size, last.Size, err))
			continue
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			report(err)
			continue
		}
		if cp.Size < last.Size {
			report(fmt.Errorf("tlogclient: log serves checkpoint size %d, older than the %d seen (consistent)", cp.Size, last.Size))
			continue
		}
		if err := seen(cp); err != nil {
			return err
		}
		last = &cp
	}
}

// Monitor follows the log at baseURL (its tlog-tiles prefix) with the
// log's verifier v from checkpoint prev (nil to start from the first one
// fetched), polling every interval, and writes a line to out for each new
// verified, consistent checkpoint and each transient failure. It returns an
// *InconsistencyError holding both checkpoints when the log proves
// inconsistent (print its Evidence and exit non-zero), another error when
// the log serves a bad signature or bad tiles, and ctx's error when ctx
// ends.
func Monitor(ctx context.Context, baseURL string, v note.Verifier, prev []byte, interval time.Duration, out io.Writer) error {
	c := &Client{URL: baseURL, Verifier: v}
	return c.Monitor(ctx, prev, interval, out)
}

// Monitor is the package-level Monitor with c's URL, HTTP client and
// verifier.
func (c *Client) Monitor(ctx context.Context, prev []byte, interval time.Duration, out io.Writer) error {
	var last *uint64
	if prev != nil && c.Verifier != nil {
		if cp, err := ledger.ParseCheckpoint(prev, c.Verifier); err == nil {
			last = &cp.Size
		}
	}
	return c.Follow(ctx, prev, interval, func(cp ledger.Checkpoint) error {
		root := base64.StdEncoding.EncodeToString(cp.Root)
		if last == nil {
			fmt.Fprintf(out, "%s size %d root %s\n", cp.Origin, cp.Size, root)
		} else {
			fmt.Fprintf(out, "%s size %d root %s (consistent with size %d)\n", cp.Origin, cp.Size, root, *last)
		}
		size := cp.Size
		last = &size
		return nil
	}, func(err error) {
		fmt.Fprintf(out, "warning: %v\n", err)
	})
}
