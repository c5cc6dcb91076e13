package witness

import (
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

// ErrNoQuorum is wrapped by the errors of VerifyCosigned and Publish when
// fewer than the quorum of witnesses cosigned a checkpoint.
var ErrNoQuorum = errors.New("witness: no quorum of cosignatures")

// VerifyCosigned verifies, offline, a checkpoint note signed by the log and
// cosigned by at least quorum distinct witnesses among witnesses. The log
// signature and body are checked as ledger.ParseCheckpoint does. Signatures
// by keys that are neither the log's nor a listed witness's are ignored and
// never count; a signature line that claims a listed key but does not verify
// (for example a cosignature copied from another checkpoint) is an error.
// quorum must be 1..len(witnesses) and the witness keys distinct from each
// other and from the log key. It does not read the clock.
func VerifyCosigned(noteText []byte, logVerifier note.Verifier, witnesses []note.Verifier, quorum int) (ledger.Checkpoint, error) {
	if logVerifier == nil {
		return ledger.Checkpoint{}, errors.New("witness: VerifyCosigned needs the log verifier")
	}
	if err := checkWitnessSet(logVerifier, witnesses, quorum); err != nil {
		return ledger.Checkpoint{}, err
	}
	cp, err := ledger.ParseCheckpoint(noteText, logVerifier)
	if err != nil {
		return ledger.Checkpoint{}, err
	}
	n, err := note.Open(noteText, note.VerifierList(witnesses...))
	var unverified *note.UnverifiedNoteError
	switch {
	case errors.As(err, &unverified):
		return ledger.Checkpoint{}, fmt.Errorf("%w: checkpoint of %q at size %d has 0 of %d required cosignatures", ErrNoQuorum, cp.Origin, cp.Size, quorum)
	case err != nil:
		return ledger.Checkpoint{}, fmt.Errorf("witness: checkpoint of %q at size %d: cosignature: %w", cp.Origin, cp.Size, err)
	}
	// note.Open lists each verified key once.
	if len(n.Sigs) < quorum {
		return ledger.Checkpoint{}, fmt.Errorf("%w: checkpoint of %q at size %d has %d of %d required cosignatures", ErrNoQuorum, cp.Origin, cp.Size, len(n.Sigs), quorum)
	}
	return cp, nil
}

// checkWitnessSet validates a witness list and quorum.
func checkWitnessSet(logVerifier note.Verifier, witnesses []note.Verifier, quorum int) error {
	if quorum < 1 || quorum > len(witnesses) {
		return fmt.Errorf("witness: quorum %d of %d witnesses, want 1..%d", quorum, len(witnesses), len(witnesses))
	}
	type key struct {
		name string
		hash uint32
	}
	seen := map[key]bool{}
	if logVerifier != nil {
		seen[key{logVerifier.Name(), logVerifier.KeyHash()}] = true
	}
	for i, w := range witnesses {
		if w == nil {
			return fmt.Errorf("witness: witness verifier %d is nil", i)
		}
		k := key{w.Name(), w.KeyHash()}
		if seen[k] {
			return fmt.Errorf("witness: witness verifier %d (%s %08x) duplicates another key", i, k.name, k.hash)
		}
		seen[k] = true
	}
	return nil
}
