package witness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

// threeWitnesses starts three witnesses of the test log.
func threeWitnesses(t *testing.T, dir string) []*testWitness {
	t.Helper()
	var ws []*testWitness
	for i := range 3 {
		ws = append(ws, newTestWitness(t, filepath.Join(dir, fmt.Sprintf("w%d.db", i)),
			fmt.Sprintf("witness.test/w%d", i), testKey(byte(10+i)), logsOf(t, testKey(1))))
	}
	return ws
}

func clientsOf(ws []*testWitness) ([]Client, []note.Verifier) {
	var cs []Client
	var vs []note.Verifier
	for _, w := range ws {
		cs = append(cs, w.client)
		vs = append(vs, w.v)
	}
	return cs, vs
}

func TestPublishQuorumWithOneWitnessDown(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	ws := threeWitnesses(t, dir)
	cs, vs := clientsOf(ws)
	p, err := NewPublisher(ctx, l.db, l.Log, cs, 2, vs)
	if err != nil {
		t.Fatal(err)
	}
	l.appendN(t, "e", 0, 4)
	first, err := p.Publish(ctx)
	if err != nil {
		t.Fatalf("publish with all witnesses up: %v", err)
	}
	if _, err := VerifyCosigned(first.Note, l.v, vs, 3); err != nil {
		t.Fatalf("all three should have cosigned: %v", err)
	}

	ws[1].down.Store(true)
	l.appendN(t, "e", 4, 9)
	cp, err := p.Publish(ctx)
	if err != nil {
		t.Fatalf("2-of-3 publish with one witness down: %v", err)
	}
	if cp.Size != 9 {
		t.Fatalf("published size %d, want 9", cp.Size)
	}
	if _, err := VerifyCosigned(cp.Note, l.v, vs, 2); err != nil {
		t.Fatalf("published note does not meet quorum 2: %v", err)
	}
	if _, err := VerifyCosigned(cp.Note, l.v, vs, 3); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("published note meets quorum 3 with a witness down: %v", err)
	}
	n, size, err := p.Latest(ctx)
	if err != nil || size != 9 || !bytes.Equal(n, cp.Note) {
		t.Fatalf("Latest = %d, %v", size, err)
	}
	// The published note is a checkpoint of the log: entries prove against it.
	if _, err := l.ProveEntry(ctx, 8, cp); err != nil {
		t.Fatalf("ProveEntry against the cosigned checkpoint: %v", err)
	}

	// The witness comes back: it resyncs from size 4 and cosigns again.
	ws[1].down.Store(false)
	l.appendN(t, "e", 9, 10)
	cp, err = p.Publish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyCosigned(cp.Note, l.v, vs, 3); err != nil {
		t.Fatalf("after the witness came back: %v", err)
	}
}

func TestNoQuorumLogKeepsAppending(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	ws := threeWitnesses(t, dir)
	cs, vs := clientsOf(ws)
	p, err := NewPublisher(ctx, l.db, l.Log, cs, 3, vs)
	if err != nil {
		t.Fatal(err)
	}
	l.appendN(t, "e", 0, 3)
	if _, err := p.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	ws[2].down.Store(true)

	// Run the background publisher while the log keeps sequencing.
	runCtx, stop := context.WithCancel(ctx)
	failures := make(chan error, 100)
	done := make(chan error, 1)
	go func() {
		done <- p.Run(runCtx, 5*time.Millisecond, func(err error) {
			select {
			case failures <- err:
			default:
			}
		})
	}()
	for i := 3; i < 40; i++ {
		appendCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := l.Append(appendCtx, []byte(fmt.Sprintf("e-%d", i))); err != nil {
			t.Fatalf("append %d with a witness down: %v", i, err)
		}
		cancel()
	}
	select {
	case err := <-failures:
		if !errors.Is(err, ErrNoQuorum) {
			t.Fatalf("failed round: %v, want ErrNoQuorum", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no failed publication round reported")
	}
	_, size, err := p.Latest(ctx)
	if err != nil || size != 3 {
		t.Fatalf("with 3-of-3 and one witness down, published size %d (%v), want still 3", size, err)
	}
	cp, err := l.Checkpoint(ctx)
	if err != nil || cp.Size != 40 {
		t.Fatalf("log size %d, %v; want 40", cp.Size, err)
	}

	// The witness returns: the next round publishes everything.
	ws[2].down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, size, err = p.Latest(ctx)
		if err == nil && size == 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("published size %d (%v) after the witness came back, want 40", size, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	n, _, err := p.Latest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyCosigned(n, l.v, vs, 3); err != nil {
		t.Fatal(err)
	}
}

func TestNewPublisherRefusesBadConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	ws := threeWitnesses(t, dir)
	cs, vs := clientsOf(ws)
	tests := []struct {
		name   string
		cs     []Client
		vs     []note.Verifier
		quorum int
	}{
		{"quorum 0", cs, vs, 0},
		{"quorum above witnesses", cs, vs, 4},
		{"verifier count mismatch", cs, vs[:2], 2},
		{"duplicate verifier", cs, []note.Verifier{vs[0], vs[0], vs[1]}, 2},
		{"no URL", []Client{{}, cs[1], cs[2]}, vs, 2},
	}
	for _, tt := range tests {
		if _, err := NewPublisher(ctx, l.db, l.Log, tt.cs, tt.quorum, tt.vs); err == nil {
			t.Errorf("%s: NewPublisher succeeded", tt.name)
		}
	}
}

// TestPublisherRefusesForgedCosignature: a witness answering with a
// cosignature that does not verify does not count.
func TestPublisherRefusesForgedCosignature(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	ws := threeWitnesses(t, dir)
	cs, vs := clientsOf(ws)
	// Witness 0 is expected to sign with another key than it has.
	impostor, err := CosignatureVerifierKey("witness.test/w0", testKey(77).Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if vs[0], err = NewCosignatureVerifier(impostor); err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(ctx, l.db, l.Log, cs, 3, vs)
	if err != nil {
		t.Fatal(err)
	}
	l.appendN(t, "e", 0, 2)
	if _, err := p.Publish(ctx); !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "witness.test/w0") {
		t.Fatalf("publish with a witness whose cosignature does not verify: %v", err)
	}
	if _, _, err := p.Latest(ctx); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("something was published: %v", err)
	}
}

func TestVerifyCosigned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	ws := threeWitnesses(t, dir)
	cs, vs := clientsOf(ws)
	p, err := NewPublisher(ctx, l.db, l.Log, cs, 2, vs)
	if err != nil {
		t.Fatal(err)
	}
	l.appendN(t, "e", 0, 5)
	cp5, err := p.Publish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l.appendN(t, "e", 5, 8)
	cp8, err := p.Publish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// An unknown witness cosigns cp8 too.
	stranger := newTestWitness(t, filepath.Join(dir, "s.db"), "witness.test/stranger", testKey(66), logsOf(t, testKey(1)))
	plain, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	strangerLine, err := stranger.client.AddCheckpoint(ctx, 0, nil, plain.Note)
	if err != nil {
		t.Fatal(err)
	}
	sigLines := func(n []byte) []string {
		_, sigs, _ := strings.Cut(string(n), "\n\n")
		return strings.SplitAfter(strings.TrimSuffix(sigs, "\n"), "\n")
	}
	lines8 := sigLines(cp8.Note) // log, w0, w1, w2
	lines5 := sigLines(cp5.Note)
	if len(lines8) != 4 || len(lines5) != 4 {
		t.Fatalf("cosigned notes have %d and %d signature lines, want 4", len(lines8), len(lines5))
	}
	fix := func(s string) string {
		if !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
		return s
	}
	with := func(lines ...string) []byte {
		var b strings.Builder
		b.Write(plain.Note[:bytes.Index(plain.Note, []byte("\n\n"))+2])
		for _, l := range lines {
			b.WriteString(fix(l))
		}
		return []byte(b.String())
	}
	otherLog, err := note.NewVerifier(logsOf(t, testKey(2))[testOrigin])
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		note      []byte
		logV      note.Verifier
		witnesses []note.Verifier
		quorum    int
		ok        bool
	}{
		{"three of three", cp8.Note, l.v, vs, 3, true},
		{"two of three", with(lines8[0], lines8[1], lines8[3]), l.v, vs, 2, true},
		{"one of three, quorum 2", with(lines8[0], lines8[2]), l.v, vs, 2, false},
		{"no cosignature", plain.Note, l.v, vs, 1, false},
		{"unknown key does not count", with(lines8[0], lines8[1], string(strangerLine)), l.v, vs, 2, false},
		{"unknown key ignored when quorum met", with(lines8[0], lines8[1], string(strangerLine), lines8[2]), l.v, vs, 2, true},
		{"cosignature over another checkpoint", with(lines8[0], lines8[1], lines5[2]), l.v, vs, 2, false},
		{"duplicated cosignature counts once", with(lines8[0], lines8[1], lines8[1]), l.v, vs, 2, false},
		{"no log signature", with(lines8[1], lines8[2], lines8[3]), l.v, vs, 2, false},
		{"other log key", cp8.Note, otherLog, vs, 2, false},
		{"quorum 0", cp8.Note, l.v, vs, 0, false},
		{"quorum above witnesses", cp8.Note, l.v, vs, 4, false},
		{"duplicate witness keys", cp8.Note, l.v, []note.Verifier{vs[0], vs[0]}, 2, false},
		{"log key as witness", cp8.Note, l.v, []note.Verifier{vs[0], l.v}, 2, false},
		{"nil log verifier", cp8.Note, nil, vs, 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp, err := VerifyCosigned(tt.note, tt.logV, tt.witnesses, tt.quorum)
			if tt.ok {
				if err != nil {
					t.Fatalf("VerifyCosigned: %v", err)
				}
				if cp.Size != 8 {
					t.Fatalf("size %d, want 8", cp.Size)
				}
				return
			}
			if err == nil {
				t.Fatal("VerifyCosigned accepted")
			}
		})
	}
}

// TestPublishWithHangingWitness: a witness that never answers delays a
// 2-of-3 publication by the grace period only, and a 3-of-3 round by the
// round timeout only.
func TestPublishWithHangingWitness(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	ws := threeWitnesses(t, dir)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // the server notices a closed connection only after the body
		<-r.Context().Done()
	}))
	defer hang.Close()
	cs, vs := clientsOf(ws)
	cs[2] = Client{URL: hang.URL, HTTP: hang.Client()}
	p, err := NewPublisher(ctx, l.db, l.Log, cs, 2, vs)
	if err != nil {
		t.Fatal(err)
	}
	p.quorumGrace = 50 * time.Millisecond
	l.appendN(t, "e", 0, 3)
	start := time.Now()
	cp, err := p.Publish(ctx)
	if err != nil {
		t.Fatalf("2-of-3 with a hanging witness: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("publication took %v", d)
	}
	if _, err := VerifyCosigned(cp.Note, l.v, vs, 2); err != nil {
		t.Fatal(err)
	}

	p3, err := NewPublisher(ctx, l.db, l.Log, cs, 3, vs)
	if err != nil {
		t.Fatal(err)
	}
	p3.roundTimeout = 100 * time.Millisecond
	l.appendN(t, "e", 3, 4)
	runCtx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	failed := make(chan error, 1)
	go p3.Run(runCtx, 10*time.Millisecond, func(err error) {
		select {
		case failed <- err:
		default:
		}
	})
	select {
	case err := <-failed:
		if !errors.Is(err, ErrNoQuorum) {
			t.Fatalf("round with a hanging witness failed with %v, want ErrNoQuorum", err)
		}
	case <-runCtx.Done():
		t.Fatal("a round with a hanging witness never ended")
	}
}
