package proof

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Names of the checks, in the order Verify runs them. A failure names one.
const (
	CheckFormat     = "bundle.format"
	CheckCheckpoint = "checkpoint.signature"
	CheckInclusion  = "event.inclusion"
	CheckEvent      = "event.format"
	CheckChain      = "event.chain"
	CheckOrder      = "event.order"
	CheckGrant      = "grant.signature"
	CheckBinding    = "grant.binding"
	CheckPolicy     = "policy.hash"
	CheckDecision   = "decision.rederive"
)

// GrantSkew is the clock tolerance the verifier allows between a grant's
// validity window and the recorded start of the execution.
const GrantSkew = 5 * time.Second

// Error is a failed check.
type Error struct {
	Check  string
	Detail string
}

func (e *Error) Error() string { return e.Check + ": " + e.Detail }

func fail(check, format string, args ...any) error {
	return &Error{Check: check, Detail: fmt.Sprintf(format, args...)}
}

// Report is what a successful verification established.
type Report struct {
	Execution      string
	Events         int
	CheckpointSize uint64
	Decision       string
	Rules          []string
	Outcome        string
	Checks         []string
}

// Options adjust Verify.
type Options struct {
	// Since is a checkpoint (signed note) the verifier saw earlier; the
	// bundle's checkpoint must be consistent with it.
	Since []byte
}

// Verify checks a bundle offline against the trust file. It returns the
// first failing check as an *Error.
func Verify(ctx context.Context, b *Bundle, t *Trust) (*Report, error) {
	return VerifyWith(ctx, b, t, Options{})
}

// VerifyWith is Verify with options.
func VerifyWith(ctx context.Context, b *Bundle, t *Trust, opt Options) (*Report, error) {
	rep := &Report{Execution: b.Execution, Events: len(b.Events)}
	pass := func(c string) { rep.Checks = append(rep.Checks, c) }

	if b.V != BundleVersion || len(b.Events) == 0 || b.Execution == "" {
		return nil, fail(CheckFormat, "bundle needs version %s, an execution id and events", BundleVersion)
	}
	pass(CheckFormat)

	// 1. The checkpoint is signed by the log the trust file names.
	v, err := note.NewVerifier(t.Log.Key)
	if err != nil {
		return nil, fail(CheckCheckpoint, "trust file log key: %v", err)
	}
	if t.Log.Origin != "" && v.Name() != t.Log.Origin {
		return nil, fail(CheckCheckpoint, "trust file log key is named %q, origin is %q", v.Name(), t.Log.Origin)
	}
	cp, err := ledger.ParseCheckpoint([]byte(b.Checkpoint), v)
	if err != nil {
		return nil, fail(CheckCheckpoint, "%v", err)
	}
	rep.CheckpointSize = cp.Size
	pass(CheckCheckpoint)
	if len(t.Witnesses) > 0 || t.Quorum > 0 {
		if _, err := VerifyWitnessed([]byte(b.Checkpoint), v, t.Witnesses, t.Quorum); err != nil {
			return nil, err
		}
		pass(CheckCosignatures)
	}
	if opt.Since != nil {
		if err := VerifySince(opt.Since, v, cp, b.Consistency); err != nil {
			return nil, err
		}
		pass(CheckSince)
	}

	// 2. Every entry is in the log under that checkpoint, in increasing
	// index order.
	entries := make([][]byte, len(b.Events))
	var lastIndex uint64
	for i, e := range b.Events {
		p, err := ledger.ParseProof([]byte(e.Proof))
		if err != nil {
			return nil, fail(CheckInclusion, "event %d: %v", i, err)
		}
		if !bytes.Equal(p.Checkpoint, []byte(b.Checkpoint)) {
			return nil, fail(CheckInclusion, "event %d: proof is against another checkpoint than the bundle's", i)
		}
		if _, err := ledger.VerifyProof([]byte(e.Proof), []byte(e.Entry), v); err != nil {
			return nil, fail(CheckInclusion, "event %d (index %d): %v", i, p.Index, err)
		}
		if i > 0 && p.Index <= lastIndex {
			return nil, fail(CheckInclusion, "event %d has ledger index %d, not after the previous event's %d", i, p.Index, lastIndex)
		}
		lastIndex = p.Index
		entries[i] = []byte(e.Entry)
	}
	pass(CheckInclusion)

	// 3. Entries are well-formed events of this execution.
	events := make([]*lineage.Event, len(entries))
	for i, raw := range entries {
		e, err := lineage.Parse(raw)
		if err != nil {
			return nil, fail(CheckEvent, "event %d: %v", i, err)
		}
		if e.Execution != b.Execution {
			return nil, fail(CheckEvent, "event %d belongs to execution %s, the bundle is for %s", i, e.Execution, b.Execution)
		}
		events[i] = e
	}
	pass(CheckEvent)

	// 4. They form one unbroken hash chain.
	if err := lineage.VerifyChain(events); err != nil {
		return nil, fail(CheckChain, "%v", err)
	}
	pass(CheckChain)

	// 5. The chain follows the lifecycle: intent, decision, then for a permit
	// a grant before any start, and it ends in a terminal event.
	st, err := readLifecycle(events)
	if err != nil {
		return nil, fail(CheckOrder, "%v", err)
	}
	rep.Decision, rep.Rules, rep.Outcome = st.decision.Decision, st.decision.Rules, st.outcome
	pass(CheckOrder)

	// 6. Grants: signed by a trusted key, bound to the recorded action,
	// policy, caller and execution, valid when the execution started.
	if st.grant != nil {
		keys, err := t.GrantPublicKeys()
		if err != nil {
			return nil, fail(CheckGrant, "%v", err)
		}
		token := ""
		for _, g := range b.Grants {
			if grant.TokenHash(g) == st.grant.TokenSHA256 {
				token = g
			}
		}
		if token == "" {
			return nil, fail(CheckGrant, "no grant in the bundle hashes to %s, the hash the grant event records", st.grant.TokenSHA256)
		}
		c, err := grant.VerifySignature(token, keys)
		if err != nil {
			return nil, fail(CheckGrant, "%v", err)
		}
		pass(CheckGrant)
		if err := checkBinding(c, st, t); err != nil {
			return nil, fail(CheckBinding, "%v", err)
		}
		pass(CheckBinding)
	}

	// 7. The bundled policy is the one the decision names, and 8. it gives
	// the same decision on the recorded input.
	var src []byte
	for _, p := range b.Policies {
		if p.Hash == st.decision.Policy.BundleHash {
			src = []byte(p.Source)
		}
	}
	if src == nil {
		return nil, fail(CheckPolicy, "the bundle has no policy with hash %s, which the decision names", st.decision.Policy.BundleHash)
	}
	pol, err := policy.Load(src)
	if err != nil {
		return nil, fail(CheckPolicy, "bundled policy does not load: %v", err)
	}
	if pol.Hash() != st.decision.Policy.BundleHash {
		return nil, fail(CheckPolicy, "bundled policy hashes to %s, the decision names %s", pol.Hash(), st.decision.Policy.BundleHash)
	}
	pass(CheckPolicy)
	got := pol.Evaluate(ctx, &st.intent.Action)
	if !got.SameOutcome(st.decision) {
		return nil, fail(CheckDecision, "re-evaluating the policy gives %s by %v (input %s), the record says %s by %v (input %s)",
			got.Decision, got.Rules, got.InputHash, st.decision.Decision, st.decision.Rules, st.decision.InputHash)
	}
	pass(CheckDecision)
	return rep, nil
}

// lifecycle is what readLifecycle extracts from a valid chain.
type lifecycle struct {
	intent    lineage.IntentBody
	decision  policy.Decision
	grant     *lineage.GrantBody
	start     *lineage.StartBody
	startTime time.Time
	outcome   string
}

func readLifecycle(events []*lineage.Event) (*lifecycle, error) {
	st := &lifecycle{}
	if len(events) < 2 || events[1].Type != lineage.TypeDecision {
		return nil, fmt.Errorf("the intent is not followed by a decision")
	}
	if err := events[0].DecodeBody(&st.intent); err != nil {
		return nil, err
	}
	if err := events[1].DecodeBody(&st.decision); err != nil {
		return nil, err
	}
	digest, err := st.intent.Action.Action.Digest()
	if err != nil {
		return nil, err
	}
	if digest != st.intent.ActionDigest {
		return nil, fmt.Errorf("the intent records action digest %s, its action digests to %s", st.intent.ActionDigest, digest)
	}
	if st.intent.Action.ID != events[0].Execution {
		return nil, fmt.Errorf("the intent's action id %s is not the execution id %s", st.intent.Action.ID, events[0].Execution)
	}
	// The lifecycle after the decision:
	//   deny               → nothing, or one interrupt
	//   require_approval   → approval(approved) → as permit
	//                      → approval(rejected) → nothing, or one interrupt
	//                      → interrupt (no approver, expired)
	//   permit             → grant → start → {heartbeat, egress}* → end | interrupt
	//                      → interrupt at any point after the decision
	// A revocation may come once, anywhere before the terminal event; after
	// it nothing may start.
	var (
		terminal  string
		permitted = st.decision.Decision == policy.Permit
		settled   = st.decision.Decision == policy.Deny // no grant can follow
		approval  *lineage.ApprovalBody
		revoked   bool
	)
	for i := 2; i < len(events); i++ {
		e := events[i]
		if terminal != "" {
			return nil, fmt.Errorf("event seq %d (%s) follows the terminal state %q", e.Seq, e.Type, terminal)
		}
		switch e.Type {
		case lineage.TypeApproval:
			if st.decision.Decision != policy.RequireApproval || approval != nil || st.grant != nil {
				return nil, fmt.Errorf("approval at seq %d without a pending require_approval decision", e.Seq)
			}
			approval = new(lineage.ApprovalBody)
			if err := e.DecodeBody(approval); err != nil {
				return nil, err
			}
			if approval.ActionDigest != st.intent.ActionDigest {
				return nil, fmt.Errorf("approval at seq %d is for action %s, the intent is %s", e.Seq, approval.ActionDigest, st.intent.ActionDigest)
			}
			if approval.Approver != e.Actor {
				return nil, fmt.Errorf("approval at seq %d names approver %s but was recorded by %s", e.Seq, approval.Approver, e.Actor)
			}
			switch approval.Decision {
			case "approved":
				permitted = true
			case "rejected":
				settled = true
			default:
				return nil, fmt.Errorf("approval at seq %d has verdict %q", e.Seq, approval.Decision)
			}
		case lineage.TypeGrant:
			if !permitted || settled || st.grant != nil || revoked {
				return nil, fmt.Errorf("grant at seq %d without a permit or approval, after a revocation, or a second grant", e.Seq)
			}
			st.grant = new(lineage.GrantBody)
			if err := e.DecodeBody(st.grant); err != nil {
				return nil, err
			}
		case lineage.TypeStart:
			if st.grant == nil || st.start != nil || revoked {
				return nil, fmt.Errorf("start at seq %d without a durable permit and grant before it, or after a revocation", e.Seq)
			}
			st.start = new(lineage.StartBody)
			if err := e.DecodeBody(st.start); err != nil {
				return nil, err
			}
			t, err := time.Parse(time.RFC3339Nano, e.Time)
			if err != nil {
				return nil, fmt.Errorf("start at seq %d: time %q: %w", e.Seq, e.Time, err)
			}
			st.startTime = t
			if st.start.GrantJTI != st.grant.JTI {
				return nil, fmt.Errorf("start at seq %d names grant %s, the execution's grant is %s", e.Seq, st.start.GrantJTI, st.grant.JTI)
			}
		case lineage.TypeHeartbeat, lineage.TypeEgress:
			if st.start == nil {
				return nil, fmt.Errorf("%s at seq %d before start", e.Type, e.Seq)
			}
		case lineage.TypeRevocation:
			if revoked {
				return nil, fmt.Errorf("a second revocation at seq %d", e.Seq)
			}
			var b lineage.RevocationBody
			if err := e.DecodeBody(&b); err != nil {
				return nil, err
			}
			revoked = true
		case lineage.TypeEnd:
			if st.start == nil {
				return nil, fmt.Errorf("end at seq %d without a start", e.Seq)
			}
			var b lineage.EndBody
			if err := e.DecodeBody(&b); err != nil {
				return nil, err
			}
			terminal = fmt.Sprintf("exit %d", b.ExitCode)
			if b.Signal != "" {
				terminal = "signal " + b.Signal
			}
		case lineage.TypeInterrupt:
			var b lineage.InterruptBody
			if err := e.DecodeBody(&b); err != nil {
				return nil, err
			}
			terminal = "interrupted: " + b.Reason
		default:
			return nil, fmt.Errorf("unexpected %s event at seq %d", e.Type, e.Seq)
		}
	}
	switch {
	case terminal != "":
	case st.decision.Decision == policy.Deny:
		terminal = "denied"
	case approval != nil && approval.Decision == "rejected":
		terminal = "rejected by " + approval.Approver
	default:
		return nil, fmt.Errorf("the execution has no terminal event after seq %d: the bundle is truncated or the execution still running", len(events)-1)
	}
	st.outcome = terminal
	return st, nil
}

func checkBinding(c *grant.Claims, st *lifecycle, t *Trust) error {
	a := st.intent.Action
	switch {
	case c.ID != st.grant.JTI:
		return fmt.Errorf("grant jti %s, the grant event records %s", c.ID, st.grant.JTI)
	case c.ADG != st.intent.ActionDigest:
		return fmt.Errorf("grant adg %s, the recorded action digests to %s", c.ADG, st.intent.ActionDigest)
	case c.Pol != st.decision.Policy.BundleHash:
		return fmt.Errorf("grant pol %s, the decision's policy is %s", c.Pol, st.decision.Policy.BundleHash)
	case c.Subject != a.Principal.ID:
		return fmt.Errorf("grant sub %s, the intent's principal is %s", c.Subject, a.Principal.ID)
	case c.Execution != a.ID:
		return fmt.Errorf("grant exe %s, the execution is %s", c.Execution, a.ID)
	case t.Issuer != "" && c.Issuer != t.Issuer:
		return fmt.Errorf("grant iss %s, the trust file names %s", c.Issuer, t.Issuer)
	case t.Enforcer != "" && c.Audience != t.Enforcer:
		return fmt.Errorf("grant aud %s, the trust file names enforcer %s", c.Audience, t.Enforcer)
	}
	want, err := action.Canonical(st.decision.Obligations)
	if err != nil {
		return err
	}
	got, err := action.Canonical(c.Obl)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, got) {
		return fmt.Errorf("grant obligations %s differ from the decision's %s", got, want)
	}
	if st.start != nil {
		nbf, exp := time.Unix(c.NotBefore, 0), time.Unix(c.Expiry, 0)
		if st.startTime.Before(nbf.Add(-GrantSkew)) || st.startTime.After(exp.Add(GrantSkew)) {
			return fmt.Errorf("execution started at %s, outside the grant's validity %s–%s", st.startTime.Format(time.RFC3339), nbf.Format(time.RFC3339), exp.Format(time.RFC3339))
		}
	}
	if !slices.Contains([]string{st.grant.ADG}, c.ADG) || st.grant.Pol != c.Pol || st.grant.Aud != c.Audience || st.grant.Exp != c.Expiry {
		return fmt.Errorf("the grant event's adg/pol/aud/exp differ from the grant's claims")
	}
	return nil
}
