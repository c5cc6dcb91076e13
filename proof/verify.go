package proof

import (
	"bytes"
	"cmp"
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
	CheckTask       = "task.tree"
	CheckGrant      = "grant.signature"
	CheckDelegation = "grant.delegation"
	CheckBinding    = "grant.binding"
	CheckPolicy     = "policy.hash"
	CheckDecision   = "decision.rederive"
	CheckTaskState  = "task_state"
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

// Report is what a successful verification established. Execution,
// Decision, Rules and Outcome describe an execution bundle's execution;
// a task bundle sets Task instead, and Executions lists every execution
// of either kind of bundle.
type Report struct {
	Execution      string
	Task           string
	Events         int
	CheckpointSize uint64
	Decision       string
	Rules          []string
	Outcome        string
	Executions     []ExecutionReport
	Checks         []string
}

// ExecutionReport is what was established about one execution.
type ExecutionReport struct {
	Execution string
	Task      string
	Kind      string
	Name      string
	Principal string
	Decision  string
	Rules     []string
	Outcome   string
	Events    int
	// Grant is the jti of the execution's grant ("" if none) and Parent
	// the jti of the delegation grant it descends from ("" if none).
	Grant  string
	Parent string
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

// execution is one execution of a bundle under verification.
type execution struct {
	id      string
	events  []*lineage.Event
	indexes []uint64 // ledger index of each event
	st      *lifecycle
	claims  *grant.Claims // its grant, if it has one
	token   string
}

// VerifyWith is Verify with options.
func VerifyWith(ctx context.Context, b *Bundle, t *Trust, opt Options) (*Report, error) {
	rep := &Report{Execution: b.Execution, Task: b.Task, Events: len(b.Events)}
	pass := func(c string) { rep.Checks = append(rep.Checks, c) }

	if b.V != BundleVersion || len(b.Events) == 0 || (b.Execution == "") == (b.Task == "") {
		return nil, fail(CheckFormat, "bundle needs version %s, events, and either an execution id or a task id (execution %q, task %q)", BundleVersion, b.Execution, b.Task)
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
	indexes := make([]uint64, len(b.Events))
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
		if b.Task == "" && i > 0 && p.Index <= indexes[i-1] {
			return nil, fail(CheckInclusion, "event %d has ledger index %d, not after the previous event's %d", i, p.Index, indexes[i-1])
		}
		indexes[i] = p.Index
		entries[i] = []byte(e.Entry)
	}
	if b.Task != "" {
		// A task bundle may list its events grouped by execution; the
		// proven ledger indexes give the one order they were logged in.
		if entries, indexes, err = ledgerOrder(entries, indexes); err != nil {
			return nil, err
		}
	}
	pass(CheckInclusion)

	// 3. Entries are well-formed events of this execution, or of
	// executions of this task tree (grouped by execution, in order).
	events := make([]*lineage.Event, len(entries))
	for i, raw := range entries {
		e, err := lineage.Parse(raw)
		if err != nil {
			return nil, fail(CheckEvent, "event %d: %v", i, err)
		}
		if b.Task == "" && e.Execution != b.Execution {
			return nil, fail(CheckEvent, "event %d belongs to execution %s, the bundle is for %s", i, e.Execution, b.Execution)
		}
		if e.Execution == "" {
			return nil, fail(CheckEvent, "event %d names no execution", i)
		}
		events[i] = e
	}
	execs := groupExecutions(events, indexes)
	pass(CheckEvent)

	// 4. Each execution's events form one unbroken hash chain.
	for _, x := range execs {
		if err := lineage.VerifyChain(x.events); err != nil {
			return nil, fail(CheckChain, "%v", err)
		}
	}
	pass(CheckChain)

	// 5. Each chain follows the lifecycle: intent, decision, then for a
	// permit a grant before any start, and it ends in a terminal event.
	for _, x := range execs {
		if x.st, err = readLifecycle(x.events, b.Task != ""); err != nil {
			return nil, fail(CheckOrder, "execution %s: %v", x.id, err)
		}
	}
	pass(CheckOrder)

	// 5b. A task bundle holds one task tree: every intent names the
	// bundle's root task, and its events the intent's task.
	if b.Task != "" {
		if err := checkTree(b.Task, execs); err != nil {
			return nil, err
		}
		pass(CheckTask)
	}

	// 6. Grants: every grant in the bundle is signed by a trusted key; each
	// execution's grant is the one its grant event hashes.
	keys, err := t.GrantPublicKeys()
	if err != nil {
		return nil, fail(CheckGrant, "%v", err)
	}
	grants, err := verifyGrants(b.Grants, keys)
	if err != nil {
		return nil, err
	}
	for _, x := range execs {
		if x.st.grant == nil {
			continue
		}
		g := grants.byHash[x.st.grant.TokenSHA256]
		if g == nil {
			return nil, fail(CheckGrant, "execution %s: no grant in the bundle hashes to %s, the hash the grant event records", x.id, x.st.grant.TokenSHA256)
		}
		if g.execution != nil {
			return nil, fail(CheckGrant, "grant %s is recorded by two executions, %s and %s", g.claims.ID, g.execution.id, x.id)
		}
		g.execution = x
		x.claims, x.token = g.claims, g.token
	}
	pass(CheckGrant)

	// 7. Delegation: every grant that names a parent descends from a
	// parent in the bundle, by hash, and is no wider than it; every grant
	// is some execution's or some grant's parent.
	if err := checkDelegations(grants); err != nil {
		return nil, err
	}
	pass(CheckDelegation)

	// 8. Each execution's grant is bound to its recorded action, policy,
	// caller and execution, and was valid when the execution started.
	for _, x := range execs {
		if x.claims == nil {
			continue
		}
		var parent *grant.Claims
		if x.claims.Par != nil {
			parent = grants.byJTI[x.claims.Par.JTI].claims
		}
		if err := checkBinding(x.claims, parent, x.st, t); err != nil {
			return nil, fail(CheckBinding, "execution %s: %v", x.id, err)
		}
	}
	pass(CheckBinding)

	// 9. The bundled policy is the one each decision names, and 10. it
	// gives the same decision on the recorded input.
	policies := map[string]*policy.Bundle{}
	for _, x := range execs {
		hash := x.st.decision.Policy.BundleHash
		if policies[hash] != nil {
			continue
		}
		var src []byte
		for _, p := range b.Policies {
			if p.Hash == hash {
				src = []byte(p.Source)
			}
		}
		if src == nil {
			return nil, fail(CheckPolicy, "the bundle has no policy with hash %s, which the decision of %s names", hash, x.id)
		}
		pol, err := policy.Load(src)
		if err != nil {
			return nil, fail(CheckPolicy, "bundled policy %s does not load: %v", hash, err)
		}
		if pol.Hash() != hash {
			return nil, fail(CheckPolicy, "bundled policy hashes to %s, the decision of %s names %s", pol.Hash(), x.id, hash)
		}
		policies[hash] = pol
	}
	pass(CheckPolicy)
	for _, x := range execs {
		got := policies[x.st.decision.Policy.BundleHash].Evaluate(ctx, &x.st.intent.Action)
		if !got.SameOutcome(x.st.decision) {
			return nil, fail(CheckDecision, "execution %s: re-evaluating the policy gives %s by %v (input %s), the record says %s by %v (input %s)",
				x.id, got.Decision, got.Rules, got.InputHash, x.st.decision.Decision, x.st.decision.Rules, x.st.decision.InputHash)
		}
	}
	pass(CheckDecision)

	// 11. In a task bundle, the task state each decision saw is the fold
	// of the tree's earlier decisions and outcomes.
	if b.Task != "" {
		if err := checkTaskState(b.Task, execs); err != nil {
			return nil, err
		}
		pass(CheckTaskState)
	}

	for _, x := range execs {
		a := x.st.intent.Action
		er := ExecutionReport{Execution: x.id, Task: a.Task.ID, Kind: a.Action.Kind, Name: a.Action.Name, Principal: a.Principal.ID,
			Decision: x.st.decision.Decision, Rules: x.st.decision.Rules, Outcome: x.st.outcome, Events: len(x.events)}
		if x.claims != nil {
			er.Grant = x.claims.ID
			if x.claims.Par != nil {
				er.Parent = x.claims.Par.JTI
			}
		}
		rep.Executions = append(rep.Executions, er)
	}
	if b.Task == "" {
		st := execs[0].st
		rep.Decision, rep.Rules, rep.Outcome = st.decision.Decision, st.decision.Rules, st.outcome
	}
	return rep, nil
}

// ledgerOrder sorts entries by their ledger indexes, which must be
// distinct.
func ledgerOrder(entries [][]byte, indexes []uint64) ([][]byte, []uint64, error) {
	order := make([]int, len(entries))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(indexes[a], indexes[b]) })
	e2, i2 := make([][]byte, len(entries)), make([]uint64, len(entries))
	for k, i := range order {
		e2[k], i2[k] = entries[i], indexes[i]
		if k > 0 && i2[k] == i2[k-1] {
			return nil, nil, fail(CheckInclusion, "two events of the bundle have ledger index %d", i2[k])
		}
	}
	return e2, i2, nil
}

// OutcomeOpen starts the outcome of an execution of a task bundle that had
// not ended when the bundle was made (running, or granted and never
// started). An execution bundle's execution must have ended.
const OutcomeOpen = "open"

// lifecycle is what readLifecycle extracts from a valid chain.
type lifecycle struct {
	intent    lineage.IntentBody
	decision  policy.Decision
	grant     *lineage.GrantBody
	start     *lineage.StartBody
	startTime time.Time
	outcome   string
}

// readLifecycle reads the lifecycle of one execution's chain (see the
// comment inside for the order it enforces).
//
// An execution must end in a terminal event (end, interrupt; a denial, a
// rejection or a delegation's grant end it implicitly) unless open is set:
// then one that has not ended yet is accepted, and its outcome starts with
// OutcomeOpen.
func readLifecycle(events []*lineage.Event, open bool) (*lifecycle, error) {
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
	// A delegation (agent.delegate) runs nothing: its grant is what it
	// produces, and it is complete once the grant is recorded.
	delegation := st.intent.Action.Action.Kind == grant.KindDelegate
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
		if delegation && (e.Type == lineage.TypeStart || e.Type == lineage.TypeHeartbeat || e.Type == lineage.TypeEgress || e.Type == lineage.TypeEnd) {
			return nil, fmt.Errorf("%s at seq %d: a delegation (%s) runs nothing", e.Type, e.Seq, grant.KindDelegate)
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
	case delegation && st.grant != nil && revoked:
		terminal = "delegated, revoked"
	case delegation && st.grant != nil:
		terminal = "delegated"
	case st.decision.Decision == policy.Deny:
		terminal = "denied"
	case approval != nil && approval.Decision == "rejected":
		terminal = "rejected by " + approval.Approver
	case !open:
		return nil, fmt.Errorf("the execution has no terminal event after seq %d: the bundle is truncated or the execution still running", len(events)-1)
	case st.start != nil:
		terminal = OutcomeOpen + ": running"
	case st.grant != nil:
		terminal = OutcomeOpen + ": granted, not started"
	default:
		terminal = OutcomeOpen + ": awaiting approval"
	}
	st.outcome = terminal
	return st, nil
}

// checkBinding checks that c is the grant of the execution st describes:
// its jti, action digest, policy, holder, execution, issuer, audience and
// obligations, and its validity when the execution started. parent is the
// delegation grant c descends from (nil if none). An action grant is held
// by the intent's principal and carries the decision's obligations (under
// a delegation: tightened by the parent's); a delegation grant is held by
// the sub-agent the action names, and carries exactly the scope and depth
// its intent requested.
func checkBinding(c, parent *grant.Claims, st *lifecycle, t *Trust) error {
	a := st.intent.Action
	holder := a.Principal.ID
	if a.Action.Kind == grant.KindDelegate {
		holder = a.Action.Name
	}
	switch {
	case c.ID != st.grant.JTI:
		return fmt.Errorf("grant jti %s, the grant event records %s", c.ID, st.grant.JTI)
	case c.ADG != st.intent.ActionDigest:
		return fmt.Errorf("grant adg %s, the recorded action digests to %s", c.ADG, st.intent.ActionDigest)
	case c.Pol != st.decision.Policy.BundleHash:
		return fmt.Errorf("grant pol %s, the decision's policy is %s", c.Pol, st.decision.Policy.BundleHash)
	case c.Subject != holder:
		return fmt.Errorf("grant sub %s, the %s action's holder is %s", c.Subject, a.Action.Kind, holder)
	case c.Execution != a.ID:
		return fmt.Errorf("grant exe %s, the execution is %s", c.Execution, a.ID)
	case t.Issuer != "" && c.Issuer != t.Issuer:
		return fmt.Errorf("grant iss %s, the trust file names %s", c.Issuer, t.Issuer)
	case t.Enforcer != "" && c.Audience != t.Enforcer:
		return fmt.Errorf("grant aud %s, the trust file names enforcer %s", c.Audience, t.Enforcer)
	case (c.Par == nil) != (parent == nil):
		return fmt.Errorf("grant par %v does not match the parent found %v", c.Par, parent != nil)
	}
	if err := checkDelegationRequest(c, a.Action); err != nil {
		return err
	}
	want := st.decision.Obligations
	if parent != nil {
		var err error
		if want, err = want.Tighten(parent.Obl); err != nil {
			return fmt.Errorf("the decision's obligations do not combine with parent %s's: %w", parent.ID, err)
		}
		if !grant.SameObligations(want, c.Obl) {
			w, _ := action.Canonical(want)
			g, _ := action.Canonical(c.Obl)
			return fmt.Errorf("grant obligations %s differ from the decision's tightened by parent %s's, %s", g, parent.ID, w)
		}
	} else {
		w, err := action.Canonical(want)
		if err != nil {
			return err
		}
		g, err := action.Canonical(c.Obl)
		if err != nil {
			return err
		}
		if !bytes.Equal(w, g) {
			return fmt.Errorf("grant obligations %s differ from the decision's %s", g, w)
		}
	}
	if st.start != nil {
		nbf, exp := time.Unix(c.NotBefore, 0), time.Unix(c.Expiry, 0)
		if st.startTime.Before(nbf.Add(-GrantSkew)) || st.startTime.After(exp.Add(GrantSkew)) {
			return fmt.Errorf("execution started at %s, outside the grant's validity %s–%s", st.startTime.Format(time.RFC3339), nbf.Format(time.RFC3339), exp.Format(time.RFC3339))
		}
	}
	if st.grant.ADG != c.ADG || st.grant.Pol != c.Pol || st.grant.Aud != c.Audience || st.grant.Exp != c.Expiry {
		return fmt.Errorf("the grant event's adg/pol/aud/exp differ from the grant's claims")
	}
	return nil
}
