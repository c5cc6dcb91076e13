package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/proof"
	"github.com/etbproject/etb/witness"
)

// startWitnesses starts n real witnesses of g's log over HTTP; each can be
// taken down with its switch.
func startWitnesses(t *testing.T, g *Gateway, n int) (Witnessing, []*atomic.Bool) {
	t.Helper()
	ctx := context.Background()
	v, err := g.LogVerifier()
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := ledger.VerifierKey(g.Config().LogOrigin, g.logPub)
	if err != nil {
		t.Fatal(err)
	}
	var ws Witnessing
	var downs []*atomic.Bool
	for i := range n {
		db, err := ledger.OpenSQLite(ctx, filepath.Join(t.TempDir(), "w.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(40 + i)}, 32))
		w, err := witness.New(ctx, db, witness.Config{Name: fmt.Sprintf("witness.test/w%d", i), Key: key, Logs: map[string]string{v.Name(): vkey}})
		if err != nil {
			t.Fatal(err)
		}
		down := new(atomic.Bool)
		h := w.Handler()
		srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if down.Load() {
				http.Error(rw, "down for the test", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(rw, r)
		}))
		t.Cleanup(srv.Close)
		wkey, err := w.VerifierKey()
		if err != nil {
			t.Fatal(err)
		}
		ws.Witnesses = append(ws.Witnesses, WitnessEndpoint{URL: srv.URL, Key: wkey})
		downs = append(downs, down)
	}
	ws.Quorum = n
	return ws, downs
}

func TestPublishedEvidence(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	ws, downs := startWitnesses(t, g, 2)
	pub, err := g.NewPublisher(ctx, ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	early, err := g.Log().Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, err := g.Exec(ctx, ExecRequest{Argv: []string{"true"}, Cwd: t.TempDir()})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %v %+v", err, res)
	}
	id := res.Execution.ID
	b, err := g.PublishedEvidence(ctx, id, pub)
	if err != nil {
		t.Fatalf("PublishedEvidence: %v", err)
	}
	trust, err := g.Trust()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proof.Verify(ctx, b, trust); err != nil {
		t.Fatalf("published evidence does not verify: %v", err)
	}
	logV, err := g.LogVerifier()
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{ws.Witnesses[0].Key, ws.Witnesses[1].Key}
	cp, err := proof.VerifyWitnessed([]byte(b.Checkpoint), logV, keys, 2)
	if err != nil {
		t.Fatalf("bundle checkpoint is not cosigned by the quorum: %v", err)
	}
	// Consistency with a checkpoint the verifier saw before the execution.
	c, err := g.ConsistencyProof(ctx, early.Size, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := proof.VerifySince(early.Note, logV, cp, map[string][]string{strconv.FormatUint(early.Size, 10): c}); err != nil {
		t.Fatalf("VerifySince: %v", err)
	}

	// A witness down with quorum 2 of 2: the log keeps governing and
	// recording, publication waits, nothing is lost.
	downs[1].Store(true)
	res, err = g.Exec(ctx, ExecRequest{Argv: []string{"true"}, Cwd: t.TempDir()})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec with a witness down: %v %+v", err, res)
	}
	if _, err := g.PublishedEvidence(ctx, res.Execution.ID, pub); !errors.Is(err, witness.ErrNoQuorum) {
		t.Fatalf("PublishedEvidence without quorum: %v, want ErrNoQuorum", err)
	}
	if _, err := g.Evidence(ctx, res.Execution.ID); err != nil {
		t.Fatalf("unpublished evidence of a recorded execution: %v", err)
	}
	downs[1].Store(false)
	b, err = g.PublishedEvidence(ctx, res.Execution.ID, pub)
	if err != nil {
		t.Fatalf("PublishedEvidence after the witness came back: %v", err)
	}
	if _, err := proof.Verify(ctx, b, trust); err != nil {
		t.Fatal(err)
	}
	if _, err := proof.VerifyWitnessed([]byte(b.Checkpoint), logV, keys, 2); err != nil {
		t.Fatal(err)
	}
}
