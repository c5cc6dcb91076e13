package witness

import (
	"bytes"
	"crypto/ed25519"
	"testing"
)

// FuzzParseAddCheckpoint: the parser never panics, and whatever it accepts
// re-marshals to exactly the input (there is one encoding of a request).
func FuzzParseAddCheckpoint(f *testing.F) {
	cp := []byte("etb.test/log\n5\nZ3VhcmRpYW4gb2YgdGhlIGdhbGF4eSBkZWNpbWFsIHg=\n\n— etb.test/log AAAA\n")
	h := bytes.Repeat([]byte{7}, 32)
	f.Add(MarshalAddCheckpoint(0, nil, cp))
	f.Add(MarshalAddCheckpoint(3, [][]byte{h, h}, cp))
	f.Add([]byte("old 01\n\n" + string(cp)))
	f.Add([]byte("old 3\nAAAA\n\n"))
	f.Add([]byte("old 18446744073709551615\n\nx"))
	f.Add([]byte("old 18446744073709551616\n\nx"))
	f.Add([]byte("old -1\n\nx"))
	f.Add([]byte("old 3\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		old, proof, checkpoint, err := ParseAddCheckpoint(body)
		if err != nil {
			return
		}
		if len(proof) > MaxProofLines || len(checkpoint) == 0 {
			t.Fatalf("accepted %d proof lines and a %d-byte checkpoint", len(proof), len(checkpoint))
		}
		if got := MarshalAddCheckpoint(old, proof, checkpoint); !bytes.Equal(got, body) {
			t.Fatalf("re-marshal differs:\n%q\n%q", got, body)
		}
	})
}

// FuzzCosignatureVerifierKey: parsing never panics and accepted keys
// re-encode to themselves.
func FuzzCosignatureVerifierKey(f *testing.F) {
	k, err := CosignatureVerifierKey("witness.test/w", testKey(3).Public().(ed25519.PublicKey))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(k)
	f.Add("w+00000000+BA==")
	f.Add("a+b+c")
	f.Fuzz(func(t *testing.T, vkey string) {
		v, err := NewCosignatureVerifier(vkey)
		if err != nil {
			return
		}
		cv := v.(*cosigVerifier)
		again, err := CosignatureVerifierKey(cv.name, cv.pub)
		if err != nil || again != vkey {
			t.Fatalf("accepted %q re-encodes to %q (%v)", vkey, again, err)
		}
	})
}
