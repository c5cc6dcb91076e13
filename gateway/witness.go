package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/proof"
	"github.com/etbproject/etb/witness"
)

// Witnessing is the home's witness configuration (config.json
// "witnessing"): the witnesses that cosign the log's checkpoints and how
// many of them must cosign a checkpoint before it counts as published.
type Witnessing struct {
	Witnesses []WitnessEndpoint `json:"witnesses"`
	Quorum    int               `json:"quorum"`
}

// WitnessEndpoint is one C2SP tlog-witness: its submission URL and its
// cosignature/v1 verifier key ("<name>+<hash>+<base64>", type 0x04).
type WitnessEndpoint struct {
	URL string `json:"url"`
	Key string `json:"key"`
}

// Verifiers parses the witness keys.
func (w Witnessing) Verifiers() ([]note.Verifier, error) {
	vs := make([]note.Verifier, len(w.Witnesses))
	for i, e := range w.Witnesses {
		v, err := witness.NewCosignatureVerifier(e.Key)
		if err != nil {
			return nil, fmt.Errorf("gateway: witness %d (%s): %w", i, e.URL, err)
		}
		vs[i] = v
	}
	return vs, nil
}

// NewPublisher returns a witness.Publisher for the home's log, storing
// published checkpoints in the home's database. hc nil means
// http.DefaultClient. The caller runs it (Publisher.Run) for as long as the
// log should be published; appends never wait for it.
func (g *Gateway) NewPublisher(ctx context.Context, w Witnessing, hc *http.Client) (*witness.Publisher, error) {
	vs, err := w.Verifiers()
	if err != nil {
		return nil, err
	}
	cs := make([]witness.Client, len(w.Witnesses))
	for i, e := range w.Witnesses {
		cs[i] = witness.Client{URL: e.URL, HTTP: hc}
	}
	return witness.NewPublisher(ctx, g.db, g.log, cs, w.Quorum, vs)
}

// PublishedEvidence is Evidence with every proof against the latest
// published checkpoint, whose note carries the witnesses' cosignatures. If
// no published checkpoint covers the execution's events yet, it runs one
// publication round; if that fails (for example fewer than the quorum of
// witnesses answer) it returns the error, which wraps witness.ErrNoQuorum:
// the events are durable in the log and a later call succeeds once the
// witnesses are back.
func (g *Gateway) PublishedEvidence(ctx context.Context, id string, p *witness.Publisher) (*proof.Bundle, error) {
	b, err := g.Evidence(ctx, id)
	if err != nil {
		return nil, err
	}
	indices := make([]uint64, len(b.Events))
	var need uint64 // the size that covers every event
	for i, e := range b.Events {
		pr, err := ledger.ParseProof([]byte(e.Proof))
		if err != nil {
			return nil, fmt.Errorf("gateway: evidence of %s, event %d: %w", id, i, err)
		}
		indices[i] = pr.Index
		need = max(need, pr.Index+1)
	}
	n, size, err := p.Latest(ctx)
	if err != nil && !errors.Is(err, ledger.ErrNotFound) {
		return nil, err
	}
	if err != nil || size < need {
		cp, err := p.Publish(ctx)
		if err != nil {
			return nil, fmt.Errorf("gateway: evidence of %s needs a published checkpoint of size >= %d: %w", id, need, err)
		}
		n, size = cp.Note, cp.Size
	}
	if size < need {
		return nil, fmt.Errorf("gateway: evidence of %s needs a published checkpoint of size >= %d, latest is %d", id, need, size)
	}
	v, err := g.LogVerifier()
	if err != nil {
		return nil, err
	}
	cp, err := ledger.ParseCheckpoint(n, v)
	if err != nil {
		return nil, fmt.Errorf("gateway: published checkpoint: %w", err)
	}
	for i, idx := range indices {
		pr, err := g.log.ProveEntry(ctx, idx, cp)
		if err != nil {
			return nil, err
		}
		b.Events[i].Proof = string(pr)
	}
	b.Checkpoint = string(cp.Note)
	return b, nil
}

// ConsistencyProof returns the base64 RFC 6962 consistency proof between
// the log's tree sizes a and b (in either order; from the smaller to the
// larger), the form of a value of the bundle's "consistency" field (see
// proof.VerifySince).
func (g *Gateway) ConsistencyProof(ctx context.Context, a, b uint64) ([]string, error) {
	hashes, err := g.log.ConsistencyProof(ctx, min(a, b), max(a, b))
	if err != nil {
		return nil, err
	}
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out, nil
}

// EvidenceFor is the evidence `etb evidence` and `etb run --evidence`
// write: with witnessing configured, proofs are against a published
// (quorum-cosigned) checkpoint (see PublishedEvidence); otherwise against
// the latest checkpoint. since, when non-nil, is a checkpoint the verifier
// saw earlier: the bundle then carries the consistency proof from it.
func (g *Gateway) EvidenceFor(ctx context.Context, id string, since []byte) (*proof.Bundle, error) {
	var b *proof.Bundle
	var err error
	if w := g.cfg.Witnessing; w != nil && len(w.Witnesses) > 0 {
		p, perr := g.NewPublisher(ctx, *w, nil)
		if perr != nil {
			return nil, perr
		}
		b, err = g.PublishedEvidence(ctx, id, p)
	} else {
		b, err = g.Evidence(ctx, id)
	}
	if err != nil || since == nil {
		return b, err
	}
	v, err := g.LogVerifier()
	if err != nil {
		return nil, err
	}
	old, err := ledger.ParseCheckpoint(since, v)
	if err != nil {
		return nil, fmt.Errorf("gateway: --since checkpoint: %w", err)
	}
	cp, err := ledger.ParseCheckpoint([]byte(b.Checkpoint), v)
	if err != nil {
		return nil, err
	}
	if old.Size > cp.Size {
		return nil, fmt.Errorf("gateway: the --since checkpoint (size %d) is newer than the evidence's (size %d)", old.Size, cp.Size)
	}
	hashes, err := g.ConsistencyProof(ctx, old.Size, cp.Size)
	if err != nil {
		return nil, err
	}
	b.Consistency = map[string][]string{fmt.Sprint(old.Size): hashes}
	return b, nil
}

// Fsck checks the home's ledger from first principles (ledger.Fsck).
func (g *Gateway) Fsck(ctx context.Context) (ledger.Report, error) {
	st, err := ledger.NewSQLiteStorage(ctx, g.db)
	if err != nil {
		return ledger.Report{}, err
	}
	v, err := g.LogVerifier()
	if err != nil {
		return ledger.Report{}, err
	}
	return ledger.Fsck(ctx, st, v)
}
