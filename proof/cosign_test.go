package proof

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/witness"
)

const cosignOrigin = "etb.test/log"

func cosignKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

// cosignFixture is a real ledger with two real witnesses over HTTP.
type cosignFixture struct {
	log   *ledger.Log
	logV  note.Verifier
	wkeys []string
	pub   *witness.Publisher
}

func newCosignFixture(t *testing.T) *cosignFixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := ledger.OpenSQLite(ctx, filepath.Join(dir, "log.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ledger.NewSigner(cosignOrigin, cosignKey(1))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.New(ctx, st, signer, cosignOrigin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	vkey, err := ledger.VerifierKey(cosignOrigin, cosignKey(1).Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	logV, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	f := &cosignFixture{log: l, logV: logV}
	var clients []witness.Client
	var vs []note.Verifier
	for i := range 2 {
		wdb, err := ledger.OpenSQLite(ctx, filepath.Join(dir, fmt.Sprintf("w%d.db", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { wdb.Close() })
		w, err := witness.New(ctx, wdb, witness.Config{Name: fmt.Sprintf("witness.test/w%d", i), Key: cosignKey(byte(10 + i)),
			Logs: map[string]string{cosignOrigin: vkey}})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(w.Handler())
		t.Cleanup(srv.Close)
		wkey, err := w.VerifierKey()
		if err != nil {
			t.Fatal(err)
		}
		v, err := witness.NewCosignatureVerifier(wkey)
		if err != nil {
			t.Fatal(err)
		}
		f.wkeys = append(f.wkeys, wkey)
		clients = append(clients, witness.Client{URL: srv.URL, HTTP: srv.Client()})
		vs = append(vs, v)
	}
	if f.pub, err = witness.NewPublisher(ctx, db, l, clients, 2, vs); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *cosignFixture) grow(t *testing.T, n int) ledger.Checkpoint {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if _, err := f.log.Append(ctx, []byte(fmt.Sprintf("entry %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := f.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func checkOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Check
	}
	return ""
}

func TestVerifyWitnessed(t *testing.T) {
	f := newCosignFixture(t)
	plain := f.grow(t, 5)
	cosigned, err := f.pub.Publish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The log's own key, as a cosignature key: the log signature must not
	// count as a cosignature.
	logAsWitness, err := witness.CosignatureVerifierKey(cosignOrigin, cosignKey(1).Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		note   []byte
		keys   []string
		quorum int
		check  string // "" for success
	}{
		{"quorum 2 of 2", cosigned.Note, f.wkeys, 2, ""},
		{"quorum 1 of 2", cosigned.Note, f.wkeys, 1, ""},
		{"not cosigned", plain.Note, f.wkeys, 1, CheckCosignatures},
		{"quorum 3 of 2", cosigned.Note, f.wkeys, 3, CheckCosignatures},
		{"bad witness key", cosigned.Note, []string{"nonsense"}, 1, CheckCosignatures},
		{"log key given as witness key", cosigned.Note, []string{logAsWitness}, 1, CheckCosignatures},
		{"no log signature", bytes.Replace(cosigned.Note, []byte("\n— "+cosignOrigin+" "), []byte("\n— other.test/log "), 1), f.wkeys, 1, CheckCheckpoint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp, err := VerifyWitnessed(tt.note, f.logV, tt.keys, tt.quorum)
			if tt.check == "" {
				if err != nil || cp.Size != 5 {
					t.Fatalf("VerifyWitnessed = %d, %v", cp.Size, err)
				}
				return
			}
			if got := checkOf(err); got != tt.check {
				t.Fatalf("error %v (check %q), want check %q", err, got, tt.check)
			}
		})
	}
}

func TestVerifySince(t *testing.T) {
	ctx := context.Background()
	f := newCosignFixture(t)
	seen := f.grow(t, 4)
	cp := f.grow(t, 9)
	hashes, err := f.log.ConsistencyProof(ctx, seen.Size, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	enc := make([]string, len(hashes))
	for i, h := range hashes {
		enc[i] = base64.StdEncoding.EncodeToString(h)
	}
	key := strconv.FormatUint(seen.Size, 10)
	if err := VerifySince(seen.Note, f.logV, cp, map[string][]string{key: enc}); err != nil {
		t.Fatalf("seen older than the bundle: %v", err)
	}
	// The verifier saw a newer checkpoint than the bundle's.
	if err := VerifySince(cp.Note, f.logV, seen, map[string][]string{strconv.FormatUint(cp.Size, 10): enc}); err != nil {
		t.Fatalf("seen newer than the bundle: %v", err)
	}
	if err := VerifySince(cp.Note, f.logV, cp, nil); err != nil {
		t.Fatalf("same checkpoint: %v", err)
	}

	// A fork: same key and origin, different entry.
	g := newCosignFixture(t)
	g.grow(t, 3)
	if _, err := g.log.Append(ctx, []byte("forked")); err != nil {
		t.Fatal(err)
	}
	forked := g.grow(t, 9)
	forkHashes, err := g.log.ConsistencyProof(ctx, 4, forked.Size)
	if err != nil {
		t.Fatal(err)
	}
	forkEnc := make([]string, len(forkHashes))
	for i, h := range forkHashes {
		forkEnc[i] = base64.StdEncoding.EncodeToString(h)
	}
	bad := []struct {
		name string
		seen []byte
		cp   ledger.Checkpoint
		c    map[string][]string
	}{
		{"no proof for the seen size", seen.Note, cp, map[string][]string{"3": enc}},
		{"fork", seen.Note, forked, map[string][]string{key: forkEnc}},
		{"truncated proof", seen.Note, cp, map[string][]string{key: enc[1:]}},
		{"non-canonical base64", seen.Note, cp, map[string][]string{key: append([]string{enc[0] + "\n"}, enc[1:]...)}},
		{"seen note forged", bytes.Replace(seen.Note, []byte("\n4\n"), []byte("\n5\n"), 1), cp, map[string][]string{key: enc}},
		{"same size other root", seen.Note, ledger.Checkpoint{Origin: cosignOrigin, Size: 4, Root: cp.Root}, nil},
	}
	for _, tt := range bad {
		if err := VerifySince(tt.seen, f.logV, tt.cp, tt.c); checkOf(err) != CheckSince {
			t.Errorf("%s: VerifySince = %v, want a %s failure", tt.name, err, CheckSince)
		}
	}
}
