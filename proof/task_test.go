package proof

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// flowPolicy permits reading under /data (the read labels the task
// secret_read), delegating, and HTTP GETs, except that a task labelled
// secret_read may not send anything out.
const flowPolicy = `version: etb.policy/v1
name: flow
defaults:
  obligations: {timeout: 1m}
rules:
  - id: read-data
    effect: permit
    match: {kind: fs.read}
    when: action.target.paths.all(p, p.startsWith("/data/"))
    labels: [secret_read]
    obligations: {timeout: 30s}
  - id: delegate
    effect: permit
    match: {kind: agent.delegate}
  - id: fetch
    effect: permit
    match: {kind: http.request, name: GET}
  - id: no-exfiltration
    effect: forbid
    match: {kind: http.request}
    when: '"secret_read" in task.labels'
    message: no egress after reading a secret
`

// world is a miniature gateway writing a real ledger (SQLite) and signing
// real grants, so tests can build task bundles — honest ones, and ones a
// lying gateway would produce.
type world struct {
	t      *testing.T
	ctx    context.Context
	log    *ledger.Log
	trust  *Trust
	iss    *grant.Issuer
	pol    *policy.Bundle
	src    string
	clock  time.Time
	tasks  map[string]*wtask
	events []wevent
	grants []string
	n      int
}

type wtask struct {
	parent  string
	root    string
	version int64
	recent  []action.Recent
	labels  []string // its own
}

type wevent struct {
	raw   []byte
	index uint64
}

// acted is an execution the world recorded.
type acted struct {
	id     string
	token  string
	claims grant.Claims
	d      policy.Decision
}

// opts vary how the world records one action.
type opts struct {
	parent *acted               // the delegation grant the caller acts under
	action func(*action.Action) // alters the recorded input before the decision (a lying gateway)
	claims func(*grant.Claims)  // alters the claims before they are signed
	issuer *grant.Issuer        // signs with another issuer
	fail   bool                 // the action exits 1
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, filepath.Join(t.TempDir(), "log.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	const origin = "etb.test/log"
	logPub, logKey, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ledger.NewSigner(origin, logKey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.New(ctx, st, signer, origin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	vkey, err := ledger.VerifierKey(origin, logPub)
	if err != nil {
		t.Fatal(err)
	}
	gPub, gKey, _ := ed25519.GenerateKey(rand.Reader)
	pol, err := policy.Load([]byte(flowPolicy))
	if err != nil {
		t.Fatal(err)
	}
	tr := &Trust{V: TrustVersion, Issuer: "etb-test", Enforcer: "spiffe://etb.test/enforcer",
		GrantKeys: map[string]string{grant.KeyID(gPub): base64.StdEncoding.EncodeToString(gPub)}}
	tr.Log.Origin, tr.Log.Key = origin, vkey
	now := time.Now().UTC().Truncate(time.Second)
	w := &world{t: t, ctx: ctx, log: l, trust: tr, pol: pol, src: flowPolicy, clock: now, tasks: map[string]*wtask{}}
	w.iss = grant.NewIssuer(gKey, tr.Issuer, time.Minute, func() time.Time { return w.clock })
	return w
}

func (w *world) now() string {
	w.clock = w.clock.Add(time.Millisecond)
	return action.FormatTime(w.clock)
}

// labels returns the labels of task and its ancestors, sorted.
func (w *world) labels(task string) []string {
	out := []string{}
	for cur := task; cur != ""; cur = w.tasks[cur].parent {
		for _, l := range w.tasks[cur].labels {
			if !slices.Contains(out, l) {
				out = append(out, l)
			}
		}
	}
	slices.Sort(out)
	return out
}

// task returns the state of task id, creating it under parent.
func (w *world) task(id, parent string) *wtask {
	ts := w.tasks[id]
	if ts == nil {
		root := id
		if parent != "" {
			root = w.tasks[parent].root
		}
		ts = &wtask{parent: parent, root: root, recent: []action.Recent{}}
		w.tasks[id] = ts
	}
	return ts
}

func (w *world) append(entries ...[]byte) {
	w.t.Helper()
	first, err := w.log.Append(w.ctx, entries...)
	if err != nil {
		w.t.Fatal(err)
	}
	for i, e := range entries {
		w.events = append(w.events, wevent{raw: e, index: first + uint64(i)})
	}
}

// act records one action of principal in task (created under parent if
// new): intent and decision, and for a permit the grant, then (unless it is
// a delegation) start and end.
func (w *world) act(principal, task, parent string, spec action.Spec, o opts) *acted {
	w.t.Helper()
	w.n++
	id := fmt.Sprintf("x%02d", w.n)
	ts := w.task(task, parent)
	a := action.Action{ID: id, Time: w.now(), Principal: action.Principal{ID: principal, Attestation: "test"}, Action: spec,
		Task: action.Task{ID: task, RootID: ts.root, ParentID: ts.parent, Step: ts.version, Labels: w.labels(task),
			Recent: slices.Clone(ts.recent), Usage: map[string]float64{}, StateVersion: ts.version}}
	if o.parent != nil {
		// As the gateway does: the intent records the delegation acted under.
		a.Env = map[string]string{EnvDelegation: o.parent.claims.ID}
	}
	if o.action != nil {
		o.action(&a)
	}
	if err := a.Normalize(); err != nil {
		w.t.Fatal(err)
	}
	dg, err := a.Action.Digest()
	if err != nil {
		w.t.Fatal(err)
	}
	d := w.pol.Evaluate(w.ctx, &a)
	ch := lineage.NewChain(id, task, ts.parent)
	var batch [][]byte
	add := func(typ string, body any) {
		_, raw, err := ch.Next(typ, "test", w.now(), body)
		if err != nil {
			w.t.Fatal(err)
		}
		batch = append(batch, raw)
	}
	add(lineage.TypeIntent, lineage.IntentBody{Action: a, ActionDigest: dg})
	add(lineage.TypeDecision, d)
	ts.version++
	ts.recent = append(ts.recent, action.Recent{Kind: a.Action.Kind, Name: a.Action.Name, Host: a.Action.Target.Host, Decision: d.Decision})
	if len(ts.recent) > action.MaxRecent {
		ts.recent = ts.recent[1:]
	}
	out := &acted{id: id, d: d}
	if d.Decision != policy.Permit {
		w.append(batch...)
		return out
	}
	c := grant.Claims{Subject: principal, Audience: w.trust.Enforcer, Txn: ts.root, ADG: dg, Pol: d.Policy.BundleHash, Obl: d.Obligations, Execution: id}
	if spec.Kind == grant.KindDelegate {
		req, err := grant.ParseDelegationRequest(spec.Args[0])
		if err != nil {
			w.t.Fatal(err)
		}
		c.Subject, c.Scp, c.Depth = spec.Name, &req.Scope, req.Depth
		w.task(id, task) // the sub-agent's task
	}
	if p := o.parent; p != nil {
		obl, err := c.Obl.Tighten(p.claims.Obl)
		if err != nil {
			w.t.Fatal(err)
		}
		c.Obl, c.Txn, c.Expiry = obl, p.claims.Txn, p.claims.Expiry
		c.Par = &grant.Parent{JTI: p.claims.ID, Hash: grant.TokenHash(p.token)}
	}
	if o.claims != nil {
		o.claims(&c)
	}
	iss := w.iss
	if o.issuer != nil {
		iss = o.issuer
	}
	tok, claims, err := iss.Issue(c)
	if err != nil {
		w.t.Fatal(err)
	}
	out.token, out.claims = tok, claims
	w.grants = append(w.grants, tok)
	add(lineage.TypeGrant, lineage.GrantBody{JTI: claims.ID, TokenSHA256: grant.TokenHash(tok), ADG: claims.ADG, Pol: claims.Pol, Aud: claims.Audience, Exp: claims.Expiry})
	w.append(batch...)
	if spec.Kind == grant.KindDelegate {
		return out
	}
	batch = nil
	add(lineage.TypeStart, lineage.StartBody{PID: 1, GrantJTI: claims.ID})
	w.append(batch...)
	batch = nil
	code := int64(0)
	if o.fail {
		code = 1
	}
	add(lineage.TypeEnd, lineage.EndBody{ExitCode: code})
	w.append(batch...)
	if code == 0 {
		for _, l := range d.LabelsToAdd {
			if !slices.Contains(ts.labels, l) {
				ts.labels = append(ts.labels, l)
				ts.version++
			}
		}
	}
	return out
}

// bundle returns the task bundle of root: every event, with proofs
// against the current checkpoint, every grant, the policy.
func (w *world) bundle(root string) *Bundle {
	w.t.Helper()
	cp, err := w.log.Checkpoint(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	b := &Bundle{V: BundleVersion, Task: root, Checkpoint: string(cp.Note), Grants: slices.Clone(w.grants),
		Policies: []Policy{{Hash: w.pol.Hash(), Source: w.src}}}
	for _, e := range w.events {
		p, err := w.log.ProveEntry(w.ctx, e.index, cp)
		if err != nil {
			w.t.Fatal(err)
		}
		b.Events = append(b.Events, Entry{Entry: string(e.raw), Proof: string(p)})
	}
	return b
}

func delegateSpec(t *testing.T, agent string, req grant.DelegationRequest) action.Spec {
	t.Helper()
	arg, err := req.Arg()
	if err != nil {
		t.Fatal(err)
	}
	return action.Spec{Kind: grant.KindDelegate, Name: agent, Args: []string{arg}}
}

func readSpec(p string) action.Spec {
	return action.Spec{Kind: "fs.read", Name: "cat", Args: []string{p}, Target: action.Target{Paths: []string{p}}}
}

func getSpec(host string) action.Spec {
	return action.Spec{Kind: "http.request", Name: "GET", Args: []string{"https://" + host + "/"}, Target: action.Target{Host: host, Port: 443}}
}

const (
	agentA = "spiffe://etb.test/agent/a"
	agentB = "spiffe://etb.test/agent/b"
	agentC = "spiffe://etb.test/agent/c"
)

var dataScope = grant.Scope{Actions: []grant.ScopeAction{{Kind: "fs.read", Name: "*", Paths: []string{"/data/b", "/data/c"}}, {Kind: "http.request", Name: "GET", Hosts: []string{"example.com"}}}}

// tree records the honest scenario: agent A fetches a page and reads a
// secret (task R gains secret_read); delegates to B (depth 1) who reads a
// file and delegates to C (depth 0) who reads another; A's next fetch is
// forbidden by the label. It returns the root task and the executions.
func tree(t *testing.T, w *world, o map[string]opts) (string, map[string]*acted) {
	t.Helper()
	const root = "task-r"
	x := map[string]*acted{}
	x["fetch"] = w.act(agentA, root, "", getSpec("example.com"), o["fetch"])
	x["read"] = w.act(agentA, root, "", readSpec("/data/secret"), o["read"])
	x["delegB"] = w.act(agentA, root, "", delegateSpec(t, agentB, grant.DelegationRequest{Scope: dataScope, Depth: 1, TTLSeconds: 300}), o["delegB"])
	ob := o["readB"]
	ob.parent = x["delegB"]
	x["readB"] = w.act(agentB, x["delegB"].id, "", readSpec("/data/b"), ob)
	oc := o["delegC"]
	oc.parent = x["delegB"]
	cScope := grant.Scope{Actions: []grant.ScopeAction{{Kind: "fs.read", Name: "cat", Paths: []string{"/data/c"}}}}
	x["delegC"] = w.act(agentB, x["delegB"].id, "", delegateSpec(t, agentC, grant.DelegationRequest{Scope: cScope, Depth: 0}), oc)
	orc := o["readC"]
	orc.parent = x["delegC"]
	x["readC"] = w.act(agentC, x["delegC"].id, "", readSpec("/data/c/1"), orc)
	x["exfil"] = w.act(agentA, root, "", getSpec("example.com"), o["exfil"])
	if od, ok := o["delegD"]; ok {
		x["delegD"] = w.act(agentA, root, "", delegateSpec(t, agentC, grant.DelegationRequest{Scope: cScope, Depth: 0, TTLSeconds: 60}), od)
	}
	return root, x
}

func expectFail(t *testing.T, b *Bundle, tr *Trust, check, detail string) {
	t.Helper()
	_, err := Verify(context.Background(), b, tr)
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("verification passed or failed oddly (%v); want a %s failure", err, check)
	}
	if pe.Check != check || !strings.Contains(pe.Detail, detail) {
		t.Fatalf("failed %s (%s), want %s containing %q", pe.Check, pe.Detail, check, detail)
	}
}

func TestTaskBundleVerifies(t *testing.T) {
	w := newWorld(t)
	root, x := tree(t, w, nil)
	if x["read"].d.Decision != policy.Permit || !slices.Equal(x["read"].d.LabelsToAdd, []string{"secret_read"}) {
		t.Fatalf("read decision %+v", x["read"].d)
	}
	if x["fetch"].d.Decision != policy.Permit || x["exfil"].d.Decision != policy.Deny {
		t.Fatalf("fetch %s, exfil %s: the flow rule did not apply", x["fetch"].d.Decision, x["exfil"].d.Decision)
	}
	rep, err := Verify(context.Background(), w.bundle(root), w.trust)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Task != root || len(rep.Executions) != len(x) || !slices.Contains(rep.Checks, CheckTaskState) || !slices.Contains(rep.Checks, CheckDelegation) {
		t.Fatalf("report %+v", rep)
	}
	outcomes := map[string]string{}
	for _, e := range rep.Executions {
		outcomes[e.Execution] = e.Outcome
	}
	if outcomes[x["delegB"].id] != "delegated" || outcomes[x["readC"].id] != "exit 0" || outcomes[x["exfil"].id] != "denied" {
		t.Fatalf("outcomes %v", outcomes)
	}
}

func TestTaskBundleRejectsBadDelegation(t *testing.T) {
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forger := func(w *world) *grant.Issuer {
		return grant.NewIssuer(otherKey, w.trust.Issuer, time.Minute, func() time.Time { return w.clock })
	}
	wide := grant.Scope{Actions: []grant.ScopeAction{{Kind: "fs.read", Name: "*", Paths: []string{"/"}}}}
	tests := []struct {
		name   string
		o      func(w *world) map[string]opts
		mutate func(w *world, b *Bundle, x map[string]*acted)
		check  string
		detail string
	}{
		{name: "forged child grant (another key)", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {issuer: forger(w)}}
		}, check: CheckGrant, detail: "unknown signing key"},
		{name: "widened child delegation signed by the issuer", o: func(w *world) map[string]opts {
			return map[string]opts{"delegC": {claims: func(c *grant.Claims) { c.Scp = &wide }}}
		}, check: CheckDelegation, detail: "wider"},
		{name: "child action outside the parent's scope", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {action: func(a *action.Action) { a.Action = readSpec("/data/x") }}}
		}, check: CheckDelegation, detail: "outside the scope"},
		{name: "child delegation with undiminished depth", o: func(w *world) map[string]opts {
			return map[string]opts{"delegC": {claims: func(c *grant.Claims) { c.Depth = 1 }}}
		}, check: CheckDelegation, detail: "depth"},
		{name: "child outlives parent", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {claims: func(c *grant.Claims) { c.Expiry++ }}}
		}, check: CheckDelegation, detail: "expires"},
		{name: "child with looser obligations", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {claims: func(c *grant.Claims) { c.Obl.Timeout = action.Duration(time.Hour) }}}
		}, check: CheckDelegation, detail: "looser"},
		{name: "sub-agent's grant without par (escapes the scope check)", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {claims: func(c *grant.Claims) { c.Par = nil }}}
		}, check: CheckDelegation, detail: "names no parent"},
		{name: "intent's delegation differs from the grant's parent", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {action: func(a *action.Action) { a.Env[EnvDelegation] = "another-delegation" }}}
		}, check: CheckDelegation, detail: "the intent records delegation"},
		{name: "par.hash names another parent", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {claims: func(c *grant.Claims) { c.Par.Hash = action.SHA256([]byte("another grant")) }}}
		}, check: CheckDelegation, detail: "hashes to"},
		{name: "missing parent", mutate: func(w *world, b *Bundle, x map[string]*acted) {
			b.Grants = slices.DeleteFunc(b.Grants, func(g string) bool { return g == x["delegB"].token })
		}, check: CheckGrant, detail: "no grant in the bundle hashes"},
		{name: "stray grant", mutate: func(w *world, b *Bundle, x map[string]*acted) {
			c := x["fetch"].claims
			c.ID, c.IssuedAt, c.NotBefore, c.Expiry = "", 0, 0, 0
			tok, _, err := w.iss.Issue(c)
			if err != nil {
				t.Fatal(err)
			}
			b.Grants = append(b.Grants, tok)
		}, check: CheckDelegation, detail: "no grant's parent"},
		// The policy permitted the request; the gateway signs more.
		{name: "delegation grant wider than requested", o: func(w *world) map[string]opts {
			wider := grant.Scope{Actions: append(slices.Clone(dataScope.Actions), grant.ScopeAction{Kind: "fs.write", Name: "*"})}
			return map[string]opts{"delegB": {claims: func(c *grant.Claims) { c.Scp = &wider }}}
		}, check: CheckBinding, detail: "the request asked for"},
		{name: "delegation grant deeper than requested", o: func(w *world) map[string]opts {
			return map[string]opts{"delegB": {claims: func(c *grant.Claims) { c.Depth = 5 }}}
		}, check: CheckBinding, detail: "the request asked for 1"},
		{name: "delegation grant outlives the requested ttl", o: func(w *world) map[string]opts {
			return map[string]opts{"delegD": {claims: func(c *grant.Claims) { c.Expiry = w.clock.Unix() + 600 }}}
		}, check: CheckBinding, detail: "at most"},
		{name: "delegation grant held by the delegator", o: func(w *world) map[string]opts {
			return map[string]opts{"delegD": {claims: func(c *grant.Claims) { c.Subject = agentA }}}
		}, check: CheckBinding, detail: "holder"},
		{name: "child action asked for by another agent", o: func(w *world) map[string]opts {
			return map[string]opts{"readB": {claims: func(c *grant.Claims) { c.Subject = agentC }}}
		}, check: CheckDelegation, detail: "held by"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			var o map[string]opts
			if tt.o != nil {
				o = tt.o(w)
			}
			root, x := tree(t, w, o)
			b := w.bundle(root)
			if tt.mutate != nil {
				tt.mutate(w, b, x)
			}
			expectFail(t, b, w.trust, tt.check, tt.detail)
		})
	}
}

// execBundle returns the execution bundle of id with the given grants.
func (w *world) execBundle(id string, grants ...string) *Bundle {
	w.t.Helper()
	b := w.bundle("x")
	b.Task, b.Execution, b.Grants = "", id, grants
	b.Events = slices.DeleteFunc(b.Events, func(e Entry) bool { return !strings.Contains(e.Entry, `"execution":"`+id+`"`) })
	return b
}

// The execution bundle of a sub-agent's action must carry every ancestor
// delegation grant: without its parent (or grandparent) it fails the link
// check; with them (as parents only) it verifies.
func TestExecutionBundleNeedsAncestorGrants(t *testing.T) {
	w := newWorld(t)
	_, x := tree(t, w, nil)
	expectFail(t, w.execBundle(x["readB"].id, x["readB"].token), w.trust, CheckDelegation, "not in the bundle")
	if _, err := Verify(context.Background(), w.execBundle(x["readB"].id, x["readB"].token, x["delegB"].token), w.trust); err != nil {
		t.Fatalf("with its parent: %v", err)
	}
	expectFail(t, w.execBundle(x["readC"].id, x["readC"].token, x["delegC"].token), w.trust, CheckDelegation, "not in the bundle")
	if _, err := Verify(context.Background(), w.execBundle(x["readC"].id, x["readC"].token, x["delegC"].token, x["delegB"].token), w.trust); err != nil {
		t.Fatalf("with its ancestors: %v", err)
	}
	// An ancestor that no grant names is a stray.
	expectFail(t, w.execBundle(x["readB"].id, x["readB"].token, x["delegB"].token, x["delegC"].token), w.trust, CheckDelegation, "no grant's parent")
}

func TestTaskBundleRejectsAlteredState(t *testing.T) {
	dropLabels := func(a *action.Action) { a.Task.Labels = []string{} }
	tests := []struct {
		name   string
		o      map[string]opts
		detail string
	}{
		// The lying gateway forgets the label, so the policy (re-derived
		// on the recorded input) permits the exfiltration.
		{"labels removed", map[string]opts{"exfil": {action: dropLabels}}, `lacks label "secret_read"`},
		{"inherited label removed from a sub-agent", map[string]opts{"readC": {action: dropLabels}}, `lacks label "secret_read"`},
		{"label invented", map[string]opts{"read": {action: func(a *action.Action) { a.Task.Labels = []string{"reviewed"} }}}, `has label "reviewed"`},
		{"recent window trimmed", map[string]opts{"exfil": {action: func(a *action.Action) { a.Task.Recent = a.Task.Recent[1:] }}}, "recent window"},
		{"recent window rewritten", map[string]opts{"read": {action: func(a *action.Action) { a.Task.Recent[0].Decision = policy.Deny }}}, "recent window"},
		{"state version repeated", map[string]opts{"exfil": {action: func(a *action.Action) { a.Task.StateVersion = 1 }}}, "state_version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			root, x := tree(t, w, tt.o)
			if tt.name == "labels removed" && x["exfil"].d.Decision != policy.Permit {
				t.Fatalf("with the label dropped the exfiltration is %s, want the permit a lying gateway gets", x["exfil"].d.Decision)
			}
			expectFail(t, w.bundle(root), w.trust, CheckTaskState, tt.detail)
		})
	}
}

// A failed action adds no label; a later intent that claims it is caught,
// and one that does not verifies.
func TestTaskStateFailedActionAddsNoLabel(t *testing.T) {
	w := newWorld(t)
	root, _ := tree(t, w, map[string]opts{"read": {fail: true}})
	rep, err := Verify(context.Background(), w.bundle(root), w.trust)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Executions {
		if e.Kind == "http.request" && e.Decision != policy.Permit {
			t.Fatalf("%s is %s though the read failed", e.Execution, e.Decision)
		}
	}
	w = newWorld(t)
	root, _ = tree(t, w, map[string]opts{"read": {fail: true}, "exfil": {action: func(a *action.Action) { a.Task.Labels = []string{"secret_read"} }}})
	expectFail(t, w.bundle(root), w.trust, CheckTaskState, `has label "secret_read"`)
}

// Dropping a whole execution from a task bundle breaks the fold of the
// executions after it.
func TestTaskBundleRejectsDroppedExecution(t *testing.T) {
	w := newWorld(t)
	root, x := tree(t, w, nil)
	b := w.bundle(root)
	var kept []Entry
	for _, e := range b.Events {
		if !strings.Contains(e.Entry, `"execution":"`+x["fetch"].id+`"`) {
			kept = append(kept, e)
		}
	}
	b.Events = kept
	b.Grants = slices.DeleteFunc(b.Grants, func(g string) bool { return g == x["fetch"].token })
	expectFail(t, b, w.trust, CheckTaskState, "recent window")
}

func TestTaskBundleShape(t *testing.T) {
	w := newWorld(t)
	root, x := tree(t, w, nil)
	b := w.bundle(root)
	b.Execution = x["read"].id
	expectFail(t, b, w.trust, CheckFormat, "either")
	b = w.bundle("task-other")
	expectFail(t, b, w.trust, CheckTask, "root")
	// An execution bundle holding two executions.
	b = w.bundle(root)
	b.Task, b.Execution = "", x["fetch"].id
	expectFail(t, b, w.trust, CheckEvent, "belongs to execution")
}

// The fold is a pure function of the events and their ledger indexes.
func TestFoldTaskState(t *testing.T) {
	w := newWorld(t)
	root, _ := tree(t, w, nil)
	var events []*lineage.Event
	var idx []uint64
	for _, e := range w.events {
		ev, err := lineage.Parse(e.raw)
		if err != nil {
			t.Fatal(err)
		}
		events, idx = append(events, ev), append(idx, e.index)
	}
	if err := foldTaskState(root, events, idx); err != nil {
		t.Fatalf("honest tree: %v", err)
	}
	// The label the read adds is seen only by intents after its end: an
	// index order in which the exfiltration's intent (the last intent)
	// comes first makes its label unearned.
	exfilIntent := 0
	for i, e := range events {
		if e.Type == lineage.TypeIntent {
			exfilIntent = i
		}
	}
	moved := slices.Clone(idx)
	moved[exfilIntent] = 0
	err := foldTaskState(root, events, moved)
	var pe *Error
	if !errors.As(err, &pe) || pe.Check != CheckTaskState || !strings.Contains(pe.Detail, "has label") {
		t.Fatalf("fold with the label gained after the intent: %v", err)
	}
}

// A task bundle may list its events grouped by execution: the proven
// ledger indexes order them. Two events claiming one index are refused.
func TestTaskBundleEventOrder(t *testing.T) {
	w := newWorld(t)
	root, _ := tree(t, w, nil)
	b := w.bundle(root)
	slices.SortStableFunc(b.Events, func(x, y Entry) int {
		ex, _ := lineage.Parse([]byte(x.Entry))
		ey, _ := lineage.Parse([]byte(y.Entry))
		return strings.Compare(ex.Execution, ey.Execution)
	})
	if _, err := Verify(context.Background(), b, w.trust); err != nil {
		t.Fatalf("grouped by execution: %v", err)
	}
	b.Events = append(b.Events, b.Events[0])
	expectFail(t, b, w.trust, CheckInclusion, "two events")
}

// In a task bundle an execution that has not ended (granted and never
// started, or still running) is reported open; its execution bundle fails.
func TestTaskBundleOpenExecution(t *testing.T) {
	w := newWorld(t)
	root, x := tree(t, w, nil)
	// A permitted action of B whose start and end are not (yet) logged.
	opened := w.act(agentB, x["delegB"].id, "", readSpec("/data/b/2"), opts{parent: x["delegB"]})
	w.events = w.events[:len(w.events)-2] // drop its start and end
	rep, err := Verify(context.Background(), w.bundle(root), w.trust)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range rep.Executions {
		if e.Execution == opened.id {
			found = true
			if e.Outcome != OutcomeOpen+": granted, not started" {
				t.Fatalf("open execution reported as %q", e.Outcome)
			}
		}
	}
	if !found {
		t.Fatalf("execution %s missing from the report", opened.id)
	}
	expectFail(t, w.execBundle(opened.id, opened.token, x["delegB"].token), w.trust, CheckOrder, "no terminal event")
}
