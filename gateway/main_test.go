package gateway

import (
	"os"
	"testing"

	"github.com/etbproject/etb/enforce/sandbox"
)

// TestMain lets the test binary act as the sandbox helper, which sandboxed
// commands are started through (sandbox.Command re-executes the binary).
func TestMain(m *testing.M) {
	sandbox.MaybeRunHelper()
	os.Exit(m.Run())
}
