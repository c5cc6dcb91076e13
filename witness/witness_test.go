package witness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

const testOrigin = "etb.test/log"

// testKey returns a deterministic Ed25519 key for seed byte b.
func testKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

// testLog is a real ledger on a SQLite file.
type testLog struct {
	*ledger.Log
	db *sql.DB
	v  note.Verifier
}

func newTestLog(t *testing.T, path string, key ed25519.PrivateKey) *testLog {
	t.Helper()
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ledger.NewSigner(testOrigin, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.New(ctx, st, signer, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	vkey, err := ledger.VerifierKey(testOrigin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return &testLog{Log: l, db: db, v: v}
}

// appendN appends entries named prefix-0 ... and returns the checkpoint.
func (l *testLog) appendN(t *testing.T, prefix string, from, to int) ledger.Checkpoint {
	t.Helper()
	ctx := context.Background()
	for i := from; i < to; i++ {
		if _, err := l.Append(ctx, []byte(fmt.Sprintf("%s-%d", prefix, i))); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// testWitness is a witness on a SQLite file behind a real HTTP server.
type testWitness struct {
	*Witness
	db     *sql.DB
	srv    *httptest.Server
	client Client
	v      note.Verifier
	down   atomic.Bool // when set, connections are dropped
}

func newTestWitness(t *testing.T, path, name string, key ed25519.PrivateKey, logs map[string]string) *testWitness {
	t.Helper()
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	w, err := New(ctx, db, Config{Name: name, Key: key, Logs: logs})
	if err != nil {
		t.Fatal(err)
	}
	tw := &testWitness{Witness: w, db: db}
	h := w.Handler()
	tw.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if tw.down.Load() {
			conn, _, err := rw.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		h.ServeHTTP(rw, r)
	}))
	t.Cleanup(tw.srv.Close)
	tw.client = Client{URL: tw.srv.URL, HTTP: tw.srv.Client()}
	vkey, err := w.VerifierKey()
	if err != nil {
		t.Fatal(err)
	}
	if tw.v, err = NewCosignatureVerifier(vkey); err != nil {
		t.Fatal(err)
	}
	return tw
}

func logsOf(t *testing.T, key ed25519.PrivateKey) map[string]string {
	t.Helper()
	vkey, err := ledger.VerifierKey(testOrigin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{testOrigin: vkey}
}

func TestAddCheckpointHappyPath(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	w := newTestWitness(t, filepath.Join(dir, "w.db"), "witness.test/w1", testKey(9), logsOf(t, testKey(1)))

	cp5 := l.appendN(t, "e", 0, 5)
	lines, err := w.client.AddCheckpoint(ctx, 0, nil, cp5.Note)
	if err != nil {
		t.Fatalf("first add-checkpoint: %v", err)
	}
	got, err := VerifyCosigned(append(bytes.Clone(cp5.Note), lines...), l.v, []note.Verifier{w.v}, 1)
	if err != nil {
		t.Fatalf("cosigned checkpoint does not verify: %v", err)
	}
	if got.Size != 5 || !bytes.Equal(got.Root, cp5.Root) {
		t.Fatalf("verified checkpoint %d %x, want 5 %x", got.Size, got.Root, cp5.Root)
	}

	cp9 := l.appendN(t, "e", 5, 9)
	proof, err := l.ConsistencyProof(ctx, 5, 9)
	if err != nil {
		t.Fatal(err)
	}
	lines, err = w.client.AddCheckpoint(ctx, 5, proof, cp9.Note)
	if err != nil {
		t.Fatalf("add-checkpoint 5 -> 9: %v", err)
	}
	if _, err := VerifyCosigned(append(bytes.Clone(cp9.Note), lines...), l.v, []note.Verifier{w.v}, 1); err != nil {
		t.Fatalf("cosigned checkpoint 9 does not verify: %v", err)
	}
	// Resubmitting the same checkpoint is idempotent.
	if _, err := w.client.AddCheckpoint(ctx, 9, nil, cp9.Note); err != nil {
		t.Fatalf("resubmitting checkpoint 9: %v", err)
	}
	latest, err := w.Latest(ctx, testOrigin)
	if err != nil || latest.Size != 9 {
		t.Fatalf("witness latest = %d, %v; want 9", latest.Size, err)
	}
}

// TestCosignatureFormat checks the cosignature line against the
// tlog-cosignature spec independently of the package's verifier: key ID,
// timestamp and the Ed25519 signature over the cosignature/v1 message.
func TestCosignatureFormat(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	db, err := ledger.OpenSQLite(ctx, filepath.Join(dir, "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const name = "witness.test/fixed"
	when := time.Unix(1700000000, 0)
	w, err := New(ctx, db, Config{Name: name, Key: testKey(9), Logs: logsOf(t, testKey(1)), Now: func() time.Time { return when }})
	if err != nil {
		t.Fatal(err)
	}
	cp := l.appendN(t, "e", 0, 3)
	line, rerr := w.add(ctx, MarshalAddCheckpoint(0, nil, cp.Note))
	if rerr != nil {
		t.Fatal(rerr)
	}
	prefix := "— " + name + " "
	if !bytes.HasPrefix(line, []byte(prefix)) || !bytes.HasSuffix(line, []byte("\n")) {
		t.Fatalf("cosignature line %q", line)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(string(line[len(prefix):]), "\n"))
	if err != nil || len(raw) != 4+8+64 {
		t.Fatalf("cosignature is %d bytes (%v), want 76", len(raw), err)
	}
	pub := testKey(9).Public().(ed25519.PublicKey)
	h := sha256.Sum256(append([]byte(name+"\n\x04"), pub...))
	if !bytes.Equal(raw[:4], h[:4]) {
		t.Errorf("key ID %x, want %x", raw[:4], h[:4])
	}
	if ts := binary.BigEndian.Uint64(raw[4:12]); ts != 1700000000 {
		t.Errorf("timestamp %d, want 1700000000", ts)
	}
	body := cp.Note[:bytes.Index(cp.Note, []byte("\n\n"))+1]
	msg := append([]byte("cosignature/v1\ntime 1700000000\n"), body...)
	if !ed25519.Verify(pub, msg, raw[12:]) {
		t.Error("signature does not verify over the cosignature/v1 message")
	}
	ts, err := CosignatureTime(note.Signature{Base64: base64.StdEncoding.EncodeToString(raw)})
	if err != nil || !ts.Equal(when) {
		t.Errorf("CosignatureTime = %v, %v; want %v", ts, err, when)
	}
	vkey, err := w.VerifierKey()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%s+%x+%s", name, h[:4], base64.StdEncoding.EncodeToString(append([]byte{4}, pub...))); vkey != want {
		t.Errorf("VerifierKey = %q, want %q", vkey, want)
	}
}

func TestStaleOldSizeConflict(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	w := newTestWitness(t, filepath.Join(dir, "w.db"), "witness.test/w1", testKey(9), logsOf(t, testKey(1)))
	cp5 := l.appendN(t, "e", 0, 5)
	if _, err := w.client.AddCheckpoint(ctx, 0, nil, cp5.Note); err != nil {
		t.Fatal(err)
	}
	cp8 := l.appendN(t, "e", 5, 8)
	for _, old := range []uint64{0, 3, 7} {
		var proof [][]byte
		if old > 0 {
			var err error
			if proof, err = l.ConsistencyProof(ctx, old, 8); err != nil {
				t.Fatal(err)
			}
		}
		_, err := w.client.AddCheckpoint(ctx, old, proof, cp8.Note)
		var conflict *ConflictError
		if !errors.As(err, &conflict) || !errors.Is(err, ErrConflict) || conflict.Size != 5 {
			t.Errorf("old %d: err = %v, want a conflict with size 5", old, err)
		}
	}
	// The raw answer follows the spec: 409, text/x.tlog.size, "5\n".
	resp, err := http.Post(w.srv.URL+"/add-checkpoint", "text/plain", bytes.NewReader(MarshalAddCheckpoint(0, nil, cp8.Note)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || resp.Header.Get("Content-Type") != SizeContentType || string(body) != "5\n" {
		t.Errorf("409 answer: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	// A publisher that does not know the witness's size resyncs.
	p, err := NewPublisher(ctx, l.db, l.Log, []Client{w.client}, 1, []note.Verifier{w.v})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := p.Publish(ctx)
	if err != nil {
		t.Fatalf("publish after resync: %v", err)
	}
	if pub.Size != 8 {
		t.Fatalf("published size %d, want 8", pub.Size)
	}
	if _, err := VerifyCosigned(pub.Note, l.v, []note.Verifier{w.v}, 1); err != nil {
		t.Fatal(err)
	}
}

// TestForkRefused builds two logs with the same key and origin that differ
// at index 2: the witness, having cosigned the first, refuses the second and
// keeps its state.
func TestForkRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newTestLog(t, filepath.Join(dir, "a.db"), testKey(1))
	b := newTestLog(t, filepath.Join(dir, "b.db"), testKey(1))
	w := newTestWitness(t, filepath.Join(dir, "w.db"), "witness.test/w1", testKey(9), logsOf(t, testKey(1)))

	cpA := a.appendN(t, "e", 0, 5)
	if _, err := w.client.AddCheckpoint(ctx, 0, nil, cpA.Note); err != nil {
		t.Fatal(err)
	}
	b.appendN(t, "e", 0, 2)
	b.appendN(t, "forked", 2, 3)
	cpB5 := b.appendN(t, "e", 3, 5)
	cpB6 := b.appendN(t, "e", 5, 6)
	proof, err := b.ConsistencyProof(ctx, 5, 6)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.client.AddCheckpoint(ctx, 5, proof, cpB6.Note)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnprocessableEntity {
		t.Fatalf("forked checkpoint: err = %v, want 422", err)
	}
	// Same size, other root: 409.
	if _, err := w.client.AddCheckpoint(ctx, 5, nil, cpB5.Note); !errors.Is(err, ErrConflict) {
		t.Fatalf("forked checkpoint at the same size: err = %v, want 409", err)
	}
	// Both refused checkpoints are kept as evidence.
	refused, err := w.Refused(ctx, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) != 2 || !bytes.Equal(refused[0].Note, cpB6.Note) || !bytes.Equal(refused[1].Note, cpB5.Note) ||
		refused[0].OldSize != 5 || len(refused[0].Proof) != len(proof) {
		t.Fatalf("refusal evidence: %+v", refused)
	}
	latest, err := w.Latest(ctx, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if latest.Size != 5 || !bytes.Equal(latest.Root, cpA.Root) {
		t.Fatalf("witness state moved to %d %x, want 5 %x", latest.Size, latest.Root, cpA.Root)
	}
	// The honest log still gets cosigned.
	cpA7 := a.appendN(t, "e", 5, 7)
	proof, err = a.ConsistencyProof(ctx, 5, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.client.AddCheckpoint(ctx, 5, proof, cpA7.Note); err != nil {
		t.Fatalf("honest log after refused fork: %v", err)
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	wpath := filepath.Join(dir, "w.db")
	w1 := newTestWitness(t, wpath, "witness.test/w1", testKey(9), logsOf(t, testKey(1)))
	cp5 := l.appendN(t, "e", 0, 5)
	if _, err := w1.client.AddCheckpoint(ctx, 0, nil, cp5.Note); err != nil {
		t.Fatal(err)
	}
	w1.srv.Close()
	w1.db.Close()

	w2 := newTestWitness(t, wpath, "witness.test/w1", testKey(9), logsOf(t, testKey(1)))
	latest, err := w2.Latest(ctx, testOrigin)
	if err != nil || latest.Size != 5 {
		t.Fatalf("after restart: latest %d, %v; want 5", latest.Size, err)
	}
	cp7 := l.appendN(t, "e", 5, 7)
	var conflict *ConflictError
	if _, err := w2.client.AddCheckpoint(ctx, 0, nil, cp7.Note); !errors.As(err, &conflict) || conflict.Size != 5 {
		t.Fatalf("after restart, old 0: err = %v, want conflict at 5", err)
	}
	proof, err := l.ConsistencyProof(ctx, 5, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.client.AddCheckpoint(ctx, 5, proof, cp7.Note); err != nil {
		t.Fatalf("after restart, 5 -> 7: %v", err)
	}
}

// TestRefusals covers the 4xx answers; each leaves the witness state alone.
func TestRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	forger := newTestLog(t, filepath.Join(dir, "forger.db"), testKey(2)) // same origin, other key
	w := newTestWitness(t, filepath.Join(dir, "w.db"), "witness.test/w1", testKey(9), logsOf(t, testKey(1)))
	cp3 := l.appendN(t, "e", 0, 3)
	if _, err := w.client.AddCheckpoint(ctx, 0, nil, cp3.Note); err != nil {
		t.Fatal(err)
	}
	cp5 := l.appendN(t, "e", 3, 5)
	proof, err := l.ConsistencyProof(ctx, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	forged := forger.appendN(t, "e", 0, 5)

	otherSigner, err := ledger.NewSigner("other.test/log", testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	otherNote, err := note.Sign(&note.Note{Text: "other.test/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"}, otherSigner)
	if err != nil {
		t.Fatal(err)
	}
	// Flip one bit of the log signature.
	tampered := bytes.Clone(cp5.Note)
	i := bytes.LastIndexByte(tampered, ' ') + 5
	tampered[i] ^= 1
	if tampered[i] == '\n' || tampered[i] == '=' {
		tampered[i] = 'A'
	}
	hash := base64.StdEncoding.EncodeToString(proof[0])
	req := func(old string, lines []string, cp []byte) []byte {
		s := "old " + old + "\n"
		for _, l := range lines {
			s += l + "\n"
		}
		return append([]byte(s+"\n"), cp...)
	}
	proofLines := func() []string {
		var s []string
		for _, h := range proof {
			s = append(s, base64.StdEncoding.EncodeToString(h))
		}
		return s
	}()
	tests := []struct {
		name string
		body []byte
		code int
	}{
		{"forged log signature", req("3", proofLines, forged.Note), http.StatusForbidden},
		{"tampered log signature", req("3", proofLines, tampered), http.StatusForbidden},
		{"unknown origin", req("0", nil, otherNote), http.StatusNotFound},
		{"no old line", append([]byte("\n"), cp5.Note...), http.StatusBadRequest},
		{"old with leading zero", req("03", proofLines, cp5.Note), http.StatusBadRequest},
		{"negative old", req("-1", nil, cp5.Note), http.StatusBadRequest},
		{"huge old", req("18446744073709551616", nil, cp5.Note), http.StatusBadRequest},
		{"old beyond size", req("6", proofLines, cp5.Note), http.StatusBadRequest},
		{"proof with old 0", req("0", []string{hash}, cp5.Note), http.StatusBadRequest},
		{"bad base64", req("3", []string{"!!!!"}, cp5.Note), http.StatusBadRequest},
		{"short hash", req("3", []string{"AAAA"}, cp5.Note), http.StatusBadRequest},
		{"too many proof lines", req("3", slicesRepeat(hash, MaxProofLines+1), cp5.Note), http.StatusBadRequest},
		{"no empty line", []byte("old 3\n" + hash + "\n"), http.StatusBadRequest},
		{"no checkpoint", []byte("old 3\n\n"), http.StatusBadRequest},
		{"garbage checkpoint", req("3", proofLines, []byte(testOrigin+"\nnot a note")), http.StatusBadRequest},
		{"wrong proof", req("3", []string{hash, hash}, cp5.Note), http.StatusUnprocessableEntity},
		{"huge body", bytes.Repeat([]byte("A"), maxRequestBytes+10), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := http.Post(w.srv.URL+"/add-checkpoint", "text/plain", bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, msg, tt.code)
			}
			if len(msg) == 0 {
				t.Error("refusal has an empty body")
			}
		})
	}
	resp, err := http.Get(w.srv.URL + "/add-checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET add-checkpoint: %d, want 405", resp.StatusCode)
	}
	latest, err := w.Latest(ctx, testOrigin)
	if err != nil || latest.Size != 3 {
		t.Fatalf("after refusals: latest %d, %v; want 3", latest.Size, err)
	}
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestNewRefusesBadConfig(t *testing.T) {
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	good := logsOf(t, testKey(1))
	tests := []struct {
		name string
		cfg  Config
	}{
		{"bad name", Config{Name: "has space", Key: testKey(9), Logs: good}},
		{"plus in name", Config{Name: "a+b", Key: testKey(9), Logs: good}},
		{"short key", Config{Name: "w", Key: testKey(9)[:10], Logs: good}},
		{"no logs", Config{Name: "w", Key: testKey(9)}},
		{"bad vkey", Config{Name: "w", Key: testKey(9), Logs: map[string]string{testOrigin: "nonsense"}}},
		{"origin mismatch", Config{Name: "w", Key: testKey(9), Logs: map[string]string{"other.test/log": good[testOrigin]}}},
	}
	for _, tt := range tests {
		if _, err := New(ctx, db, tt.cfg); err == nil {
			t.Errorf("%s: New succeeded", tt.name)
		}
	}
}

// TestConcurrentAdds submits many checkpoints at once: every success must
// leave the witness at a size it cosigned, and the stored size must never
// go backwards.
func TestConcurrentAdds(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	w := newTestWitness(t, filepath.Join(dir, "w.db"), "witness.test/w1", testKey(9), logsOf(t, testKey(1)))
	cp := l.appendN(t, "e", 0, 2)
	if _, err := w.client.AddCheckpoint(ctx, 0, nil, cp.Note); err != nil {
		t.Fatal(err)
	}
	var cps []ledger.Checkpoint
	for i := 3; i <= 10; i++ {
		cps = append(cps, l.appendN(t, "e", i-1, i))
	}
	type result struct {
		size uint64
		err  error
	}
	results := make(chan result, len(cps))
	for _, c := range cps {
		go func() {
			proof, err := l.ConsistencyProof(ctx, 2, c.Size)
			if err == nil {
				_, err = w.client.AddCheckpoint(ctx, 2, proof, c.Note)
			}
			results <- result{c.Size, err}
		}()
	}
	var won []uint64
	for range cps {
		r := <-results
		switch {
		case r.err == nil:
			won = append(won, r.size)
		case !errors.Is(r.err, ErrConflict):
			t.Errorf("size %d: %v", r.size, r.err)
		}
	}
	// All requests claimed old size 2: exactly one may win the swap.
	if len(won) != 1 {
		t.Fatalf("%d requests from old size 2 succeeded (%v), want exactly 1", len(won), won)
	}
	latest, err := w.Latest(ctx, testOrigin)
	if err != nil || latest.Size != won[0] {
		t.Fatalf("latest %d, %v; want the winner %d", latest.Size, err, won[0])
	}
}
