package policy

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/etbproject/etb/action"
)

// inputHash returns action.CanonicalHash(a), through action.AppendCanonical
// in the common case: the generic path costs several times more than the
// policy evaluation itself. FuzzInputHash checks the two agree.
func inputHash(a *action.Action) (string, error) {
	if b, ok := action.AppendCanonical(make([]byte, 0, 1024), a); ok {
		sum := sha256.Sum256(b)
		return "sha256:" + hex.EncodeToString(sum[:]), nil
	}
	return action.CanonicalHash(a)
}
