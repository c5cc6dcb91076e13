package proof

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/witness"
)

// Names of the witness and consistency checks (see VerifyWitnessed and
// VerifySince); Verify runs them right after CheckCheckpoint when the trust
// file names witnesses, and when the verifier is given a checkpoint it saw
// earlier.
const (
	CheckCosignatures = "checkpoint.cosignatures"
	CheckSince        = "checkpoint.consistency"
)

// MaxConsistencyProofs bounds the entries of a bundle's consistency map.
const MaxConsistencyProofs = 64

// VerifyWitnessed verifies that the checkpoint note is signed by the log
// (logV) and cosigned (C2SP cosignature/v1) by at least quorum of the
// witnesses whose verifier keys are witnessKeys. quorum must be
// 1..len(witnessKeys); keys must be distinct type-0x04 vkeys. It fails as a
// *Error of check CheckCosignatures (or CheckCheckpoint for the log
// signature).
func VerifyWitnessed(checkpointNote []byte, logV note.Verifier, witnessKeys []string, quorum int) (ledger.Checkpoint, error) {
	vs := make([]note.Verifier, len(witnessKeys))
	for i, k := range witnessKeys {
		v, err := witness.NewCosignatureVerifier(k)
		if err != nil {
			return ledger.Checkpoint{}, fail(CheckCosignatures, "trust file witness %d: %v", i, err)
		}
		vs[i] = v
	}
	if _, err := ledger.ParseCheckpoint(checkpointNote, logV); err != nil {
		return ledger.Checkpoint{}, fail(CheckCheckpoint, "%v", err)
	}
	cp, err := witness.VerifyCosigned(checkpointNote, logV, vs, quorum)
	if err != nil {
		return ledger.Checkpoint{}, fail(CheckCosignatures, "%v", err)
	}
	return cp, nil
}

// VerifySince verifies that cp (the bundle's verified checkpoint) and the
// checkpoint note seen (one the verifier saw earlier, verified here with
// logV) are views of one append-only log. consistency is the bundle's
// "consistency" field: decimal tree size → base64 RFC 6962 consistency proof
// hashes between that size and cp.Size, from the smaller to the larger. The
// entry for seen's size is required unless the sizes are equal. It fails as
// a *Error of check CheckSince.
func VerifySince(seen []byte, logV note.Verifier, cp ledger.Checkpoint, consistency map[string][]string) error {
	old, err := ledger.ParseCheckpoint(seen, logV)
	if err != nil {
		return fail(CheckSince, "checkpoint seen before: %v", err)
	}
	if len(consistency) > MaxConsistencyProofs {
		return fail(CheckSince, "bundle has %d consistency proofs, limit %d", len(consistency), MaxConsistencyProofs)
	}
	var hashes [][]byte
	if old.Size != cp.Size {
		enc, ok := consistency[strconv.FormatUint(old.Size, 10)]
		if !ok {
			return fail(CheckSince, "bundle has no consistency proof between size %d (seen before) and its checkpoint's size %d", old.Size, cp.Size)
		}
		if hashes, err = decodeHashes(enc); err != nil {
			return fail(CheckSince, "consistency proof from size %d: %v", old.Size, err)
		}
	}
	older, newer := old, cp
	if older.Size > newer.Size {
		older, newer = newer, older
	}
	if err := ledger.VerifyConsistency(older, newer, hashes); err != nil {
		return fail(CheckSince, "checkpoint seen before (size %d) and the bundle's (size %d) are not consistent: %v", old.Size, cp.Size, err)
	}
	return nil
}

// decodeHashes decodes canonical standard base64 32-byte hashes.
func decodeHashes(enc []string) ([][]byte, error) {
	if len(enc) > 2*ledger.MaxProofHashes {
		return nil, fmt.Errorf("%d hashes, limit %d", len(enc), 2*ledger.MaxProofHashes)
	}
	out := make([][]byte, len(enc))
	for i, s := range enc {
		h, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil || len(h) != 32 || base64.StdEncoding.EncodeToString(h) != s {
			return nil, errors.New("hash " + strconv.Itoa(i) + " is not canonical base64 of 32 bytes")
		}
		out[i] = h
	}
	return out, nil
}
