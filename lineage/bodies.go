package lineage

import (
	"strconv"

	"github.com/etbproject/etb/action"
)

// IntentBody is the body of an intent event: the whole action as evaluated,
// and its digest.
type IntentBody struct {
	Action       action.Action `json:"action"`
	ActionDigest string        `json:"action_digest"`
}

// GrantBody is the body of a grant event. The token itself travels in the
// evidence bundle; the ledger holds only its hash.
type GrantBody struct {
	JTI         string `json:"jti"`
	TokenSHA256 string `json:"token_sha256"`
	ADG         string `json:"adg"`
	Pol         string `json:"pol"`
	Aud         string `json:"aud"`
	Exp         int64  `json:"exp"`
}

// StartBody is the body of a start event.
type StartBody struct {
	PID           int64  `json:"pid"`
	Program       string `json:"program"`
	ProgramSHA256 string `json:"program_sha256"`
	GrantJTI      string `json:"grant_jti"`
}

// EndBody is the body of an end event: how the process ended and digests
// of what it wrote.
type EndBody struct {
	ExitCode     int64  `json:"exit_code"`
	Signal       string `json:"signal"`
	DurationNS   int64  `json:"duration_ns"`
	StdoutSHA256 string `json:"stdout_sha256"`
	StdoutBytes  int64  `json:"stdout_bytes"`
	StderrSHA256 string `json:"stderr_sha256"`
	StderrBytes  int64  `json:"stderr_bytes"`
	// Cost, if the enforcer reports it, is the action's actual cost: it
	// settles the reservations the decision made on its limit slots
	// (otherwise the reserved cost stands).
	Cost *float64 `json:"cost,omitempty"`
}

// InterruptBody is the body of an interrupt event: why governed execution
// was stopped or refused after the decision.
type InterruptBody struct {
	// Reason is one of "timeout", "grant_invalid", "start_failed",
	// "revoked", "lease_lost", "ledger_failed".
	Reason string `json:"reason"`
	Detail string `json:"detail"`
}

// EgressBody is the body of an egress event: one connection attempt of a
// sandboxed command through the egress proxy.
type EgressBody struct {
	Method  string `json:"method"`
	Target  string `json:"target"`
	Allowed bool   `json:"allowed"`
	Error   string `json:"error"`
}

// ApprovalBody is the body of an approval event: a human's verdict on a
// require_approval decision, bound to the action digest it was asked for.
// The event's actor is the approver.
type ApprovalBody struct {
	Ticket       string `json:"ticket"`
	Decision     string `json:"decision"` // "approved" or "rejected"
	Approver     string `json:"approver"`
	ActionDigest string `json:"action_digest"`
	Comment      string `json:"comment,omitempty"`
}

// RevocationBody is the body of a revocation event: the execution's grant
// was revoked (by execution, task, agent or everything).
type RevocationBody struct {
	Revocation string `json:"revocation"`
	Scope      string `json:"scope"`
	Value      string `json:"value"`
}

// AppendCanonical implements CanonicalAppender.
func (g GrantBody) AppendCanonical(b []byte) ([]byte, bool) {
	ok, good := true, true
	str := func(name, v string) {
		b = append(b, name...)
		b, good = action.AppendString(b, v)
		ok = ok && good
	}
	str(`{"adg":`, g.ADG)
	str(`,"aud":`, g.Aud)
	b = append(b, `,"exp":`...)
	b = strconv.AppendInt(b, g.Exp, 10)
	ok = ok && g.Exp > -maxExactInt && g.Exp < maxExactInt
	str(`,"jti":`, g.JTI)
	str(`,"pol":`, g.Pol)
	str(`,"token_sha256":`, g.TokenSHA256)
	return append(b, '}'), ok
}

// maxExactInt is 2^53: RFC 8785 prints integers of smaller magnitude as
// plain decimals.
const maxExactInt = 1 << 53
