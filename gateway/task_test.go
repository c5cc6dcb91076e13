package gateway

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

const flowPolicy = `version: etb.policy/v1
name: flow
rules:
  - id: read-secrets
    effect: permit
    match: {kind: fs.read}
    labels: [secret_read]
  - id: egress
    effect: permit
    match: {kind: http.request}
  - id: tools
    effect: permit
    match: {kind: mcp.tool_call}
  - id: no-exfil-after-secret
    effect: forbid
    match: {kind: http.request}
    when: '"secret_read" in task.labels && !(action.target.host in ["api.internal"])'
    message: a task that read a secret may only talk to api.internal
  - id: no-egress-right-after-a-denial
    effect: forbid
    match: {kind: http.request}
    when: 'task.recent.exists(r, r.kind == "http.request" && r.decision == "deny")'
    message: one refused egress closes egress for the task
limits:
  - id: tool-budget
    match: {kind: mcp.tool_call}
    key: principal.id
    window: 1h
    max: 5
    cost: '1'
    on_exceed: deny
    message: five tool calls an hour
`

// withPolicy opens a gateway on a fresh home with the policy src.
func withPolicy(t testing.TB, src string) *Gateway {
	t.Helper()
	g := open(t, t.TempDir())
	b, err := policy.Load([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetPolicy(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return g
}

func flowAction(kind, name, host, task, agent string) *action.Action {
	return &action.Action{Principal: action.Principal{ID: agent},
		Action: action.Spec{Kind: kind, Name: name, Args: []string{}, Target: action.Target{Host: host}},
		Task:   action.Task{ID: task}}
}

// succeed records start and a successful end of a permitted execution.
func succeed(t testing.TB, ex *Execution) {
	t.Helper()
	ctx := context.Background()
	if ex.Decision.Decision != policy.Permit {
		t.Fatalf("%s %s: %s by %v, want permit", ex.Action.Action.Kind, ex.Action.Action.Name, ex.Decision.Decision, ex.Decision.Rules)
	}
	if err := ex.Record(ctx, lineage.TypeStart, lineage.StartBody{GrantJTI: ex.Claims.ID}); err != nil {
		t.Fatal(err)
	}
	if err := ex.Record(ctx, lineage.TypeEnd, lineage.EndBody{}); err != nil {
		t.Fatal(err)
	}
}

// The scenario: after a task read a secret, egress to a host
// outside the allow-list is denied at the second step; the same egress in
// another task, or to the allowed host, is not.
func TestFlowReadSecretThenEgressDenied(t *testing.T) {
	ctx := context.Background()
	g := withPolicy(t, flowPolicy)
	const agent = "spiffe://etb.local/agent/a"
	begin := func(a *action.Action) *Execution {
		t.Helper()
		ex, err := g.Begin(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	// Before the read, egress anywhere is permitted.
	pre := begin(flowAction(action.KindHTTP, "POST", "evil.example", "t1", agent))
	succeed(t, pre)

	read := begin(flowAction("fs.read", "/secrets/key", "", "t1", agent))
	if !slices.Equal(read.Decision.LabelsToAdd, []string{"secret_read"}) {
		t.Fatalf("labels to add %v", read.Decision.LabelsToAdd)
	}
	// A permitted read that has not ended yet has not added its label.
	succeed(t, read)

	out := begin(flowAction(action.KindHTTP, "POST", "evil.example", "t1", agent))
	if out.Decision.Decision != policy.Deny || !slices.Equal(out.Decision.Rules, []string{"no-exfil-after-secret"}) {
		t.Fatalf("egress after the secret: %s by %v", out.Decision.Decision, out.Decision.Rules)
	}
	if !slices.Contains(out.Action.Task.Labels, "secret_read") || out.Action.Task.StateVersion <= read.Action.Task.StateVersion {
		t.Fatalf("the decision's recorded state %+v", out.Action.Task)
	}
	// The recent window now holds a denied egress: even the allowed host is
	// refused by the window rule.
	internal := begin(flowAction(action.KindHTTP, "POST", "api.internal", "t1", agent))
	if internal.Decision.Decision != policy.Deny || !slices.Equal(internal.Decision.Rules, []string{"no-egress-right-after-a-denial"}) {
		t.Fatalf("egress after a denial: %s by %v", internal.Decision.Decision, internal.Decision.Rules)
	}
	// Another task is untouched; a child task inherits the label.
	other := begin(flowAction(action.KindHTTP, "POST", "evil.example", "t2", agent))
	if other.Decision.Decision != policy.Permit {
		t.Fatalf("another task: %s by %v", other.Decision.Decision, other.Decision.Rules)
	}
	child := flowAction(action.KindHTTP, "POST", "evil.example", "t1-child", agent)
	child.Task.ParentID = "t1"
	ce := begin(child)
	if ce.Decision.Decision != policy.Deny || ce.Action.Task.RootID != "t1" {
		t.Fatalf("child task: %s by %v (root %q)", ce.Decision.Decision, ce.Decision.Rules, ce.Action.Task.RootID)
	}
	// An agent cannot move a task under another parent, nor name a parent
	// that does not exist.
	moved := flowAction(action.KindHTTP, "POST", "x", "t1-child", agent)
	moved.Task.ParentID = "t2"
	if _, err := g.Begin(ctx, moved); err == nil {
		t.Fatal("a task was re-parented")
	}
	orphan := flowAction(action.KindHTTP, "POST", "x", "t9", agent)
	orphan.Task.ParentID = "nope"
	if _, err := g.Begin(ctx, orphan); err == nil {
		t.Fatal("a task was placed under a parent that does not exist")
	}

	// The whole tree's evidence verifies, and the verifier re-derived the
	// denial from the recorded state.
	b, err := g.EvidenceForTask(ctx, "t1")
	verifyBundle(t, g, b, err)
	tree, err := g.TaskTree(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.Executions) != 4 || len(tree.Children) != 1 || tree.Children[0].ID != "t1-child" || !slices.Equal(tree.Labels, []string{"secret_read"}) {
		t.Fatalf("tree %+v", tree)
	}
}

// A failed action adds no label.
func TestFlowLabelOnlyOnSuccess(t *testing.T) {
	ctx := context.Background()
	g := withPolicy(t, flowPolicy)
	const agent = "spiffe://etb.local/agent/a"
	read, err := g.Begin(ctx, flowAction("fs.read", "/secrets/key", "", "t", agent))
	if err != nil {
		t.Fatal(err)
	}
	if err := read.Record(ctx, lineage.TypeStart, lineage.StartBody{GrantJTI: read.Claims.ID}); err != nil {
		t.Fatal(err)
	}
	if err := read.Record(ctx, lineage.TypeEnd, lineage.EndBody{ExitCode: 1}); err != nil {
		t.Fatal(err)
	}
	out, err := g.Begin(ctx, flowAction(action.KindHTTP, "POST", "evil.example", "t", agent))
	if err != nil {
		t.Fatal(err)
	}
	if out.Decision.Decision != policy.Permit || len(out.Action.Task.Labels) != 0 {
		t.Fatalf("after a failed read: %s by %v, labels %v", out.Decision.Decision, out.Decision.Rules, out.Action.Task.Labels)
	}
}

// A budget runs out and the next action is denied; a reservation released
// by an action that never started gives the unit back; under concurrent
// callers the limit holds exactly.
func TestLimitBudgetAndConcurrency(t *testing.T) {
	ctx := context.Background()
	g := withPolicy(t, flowPolicy)
	tool := func(agent string) *action.Action {
		return flowAction(action.KindMCPTool, "srv/tool", "", "", agent)
	}
	const a = "spiffe://etb.local/agent/a"
	var permits []*Execution
	for i := 0; i < 5; i++ {
		ex, err := g.Begin(ctx, tool(a))
		if err != nil {
			t.Fatal(err)
		}
		if ex.Decision.Decision != policy.Permit || len(ex.Decision.Reservations) != 1 {
			t.Fatalf("call %d: %s by %v, reservations %v", i, ex.Decision.Decision, ex.Decision.Rules, ex.Decision.Reservations)
		}
		permits = append(permits, ex)
	}
	over, err := g.Begin(ctx, tool(a))
	if err != nil {
		t.Fatal(err)
	}
	if over.Decision.Decision != policy.Deny || !slices.Equal(over.Decision.Rules, []string{"tool-budget"}) {
		t.Fatalf("sixth call: %s by %v", over.Decision.Decision, over.Decision.Rules)
	}
	if u := over.Action.Task.Usage["tool-budget/"+a]; u != 5 {
		t.Fatalf("recorded usage %v, want 5", over.Action.Task.Usage)
	}
	// One of the five never started: its unit comes back.
	if err := permits[0].Record(ctx, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "grant_invalid", Detail: "test"}); err != nil {
		t.Fatal(err)
	}
	back, err := g.Begin(ctx, tool(a))
	if err != nil || back.Decision.Decision != policy.Permit {
		t.Fatalf("after a release: %v %+v", err, back.Decision)
	}
	// Another agent has its own budget, and concurrent callers cannot
	// overspend it.
	const b = "spiffe://etb.local/agent/b"
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ex, err := g.Begin(ctx, tool(b))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				got["error: "+err.Error()]++
				return
			}
			got[ex.Decision.Decision]++
		}()
	}
	wg.Wait()
	if got[policy.Permit] != 5 || got[policy.Deny] != 11 || len(got) != 2 {
		t.Fatalf("16 concurrent calls against a budget of 5: %v", got)
	}
}

// The settled cost replaces the reservation.
func TestLimitSettlement(t *testing.T) {
	ctx := context.Background()
	g := withPolicy(t, flowPolicy)
	const a = "spiffe://etb.local/agent/a"
	ex, err := g.Begin(ctx, flowAction(action.KindMCPTool, "srv/tool", "", "", a))
	if err != nil {
		t.Fatal(err)
	}
	if err := ex.Record(ctx, lineage.TypeStart, lineage.StartBody{GrantJTI: ex.Claims.ID}); err != nil {
		t.Fatal(err)
	}
	four := 4.0
	if err := ex.Record(ctx, lineage.TypeEnd, lineage.EndBody{Cost: &four}); err != nil {
		t.Fatal(err)
	}
	next, err := g.Begin(ctx, flowAction(action.KindMCPTool, "srv/tool", "", "", a))
	if err != nil {
		t.Fatal(err)
	}
	if u := next.Action.Task.Usage["tool-budget/"+a]; u != 4 || next.Decision.Decision != policy.Permit {
		t.Fatalf("usage after settling at 4: %v, %s", next.Action.Task.Usage, next.Decision.Decision)
	}
	last, err := g.Begin(ctx, flowAction(action.KindMCPTool, "srv/tool", "", "", a))
	if err != nil {
		t.Fatal(err)
	}
	if last.Decision.Decision != policy.Deny {
		t.Fatalf("usage 5 of 5: %s (usage %v)", last.Decision.Decision, last.Action.Task.Usage)
	}
}

// Decisions of one task are serialised: concurrent decisions each see a
// distinct state version, and the recent window holds every one of them.
func TestTaskDecisionsSerialised(t *testing.T) {
	ctx := context.Background()
	g := withPolicy(t, flowPolicy)
	var wg sync.WaitGroup
	versions := make([]int64, 12)
	for i := range versions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ex, err := g.Begin(ctx, flowAction("fs.read", fmt.Sprintf("/f%d", i), "", "t", "spiffe://etb.local/agent/a"))
			if err != nil {
				t.Error(err)
				return
			}
			versions[i] = ex.Action.Task.StateVersion
		}()
	}
	wg.Wait()
	slices.Sort(versions)
	for i, v := range versions {
		if v != int64(i) {
			t.Fatalf("state versions %v, want 0..11", versions)
		}
	}
	st, err := g.loadTask(ctx, "t", "")
	if err != nil || st.version != 12 || len(st.recent) != 12 {
		t.Fatalf("final state %+v %v", st, err)
	}
}

// The task queries find a tree's tasks and executions through the partial
// indexes that leave one-action root tasks out (etb_tasks_children,
// etb_executions_task) and by primary key: none scans a table, and each
// finds what the full scan finds.
func TestTaskQueriesSearch(t *testing.T) {
	ctx := context.Background()
	g := withPolicy(t, flowPolicy)
	const agent, other = "spiffe://etb.local/agent/a", "spiffe://etb.local/agent/b"
	begin := func(a *action.Action) string {
		t.Helper()
		ex, err := g.Begin(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		return ex.ID
	}
	// A root task made for one action: its id is the execution's.
	first := begin(flowAction("fs.read", "/a", "", "", agent))
	var root string
	if err := g.db.QueryRowContext(ctx, `SELECT task FROM etb_executions WHERE id = ?`, first).Scan(&root); err != nil || root != first {
		t.Fatalf("task of a one-action root: %q %v, want %s", root, err, first)
	}
	second := begin(flowAction("fs.read", "/b", "", root, agent))
	child := flowAction("fs.read", "/c", "", "child", other)
	child.Task.ParentID = root
	third := begin(child)
	grandchild := flowAction("fs.read", "/d", "", "grandchild", other)
	grandchild.Task.ParentID = "child"
	fourth := begin(grandchild)
	unrelated := begin(flowAction("fs.read", "/e", "", "", "spiffe://etb.local/agent/c"))

	ids, err := g.TaskExecutionIDs(ctx, root)
	if want := []string{first, second, third, fourth}; err != nil || !slices.Equal(ids, want) {
		t.Fatalf("TaskExecutionIDs(root) = %v %v, want %v", ids, err, want)
	}
	if ids, err := g.TaskExecutionIDs(ctx, "child"); err != nil || !slices.Equal(ids, []string{third, fourth}) {
		t.Fatalf("TaskExecutionIDs(child) = %v %v", ids, err)
	}
	if ids, err := g.TaskExecutionIDs(ctx, unrelated); err != nil || !slices.Equal(ids, []string{unrelated}) {
		t.Fatalf("TaskExecutionIDs(unrelated) = %v %v", ids, err)
	}
	tree, err := g.TaskTree(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.Executions) != 2 || tree.Executions[0].ID != first || tree.Executions[1].ID != second ||
		len(tree.Children) != 1 || tree.Children[0].ID != "child" ||
		len(tree.Children[0].Children) != 1 || tree.Children[0].Children[0].Executions[0].ID != fourth {
		t.Fatalf("TaskTree(root) = %+v", tree)
	}
	for _, c := range []struct {
		agent string
		want  int
	}{{agent, 1}, {other, 1}, {"spiffe://etb.local/agent/c", 0}} {
		var n int
		if err := g.db.QueryRowContext(ctx, agentInTree, root, c.agent).Scan(&n); err != nil || n != c.want {
			t.Errorf("agentInTree(root, %s) = %d %v, want %d", c.agent, n, err, c.want)
		}
	}

	for _, c := range []struct {
		name, query string
		args        []any
	}{
		{"treeExecutionIDs", treeExecutionIDsQuery, []any{root}},
		{"agentInTree", agentInTree, []any{root, agent}},
		{"taskExecutions", taskExecutionsQuery, []any{root}},
		{"taskTree", taskTreeQuery, []any{root}},
	} {
		plan := queryPlan(t, g, c.query, c.args...)
		for _, step := range plan {
			// Scanning the recursive tables t and xs is walking the tree.
			if strings.HasPrefix(step, "SCAN ") && step != "SCAN t" && step != "SCAN xs" && step != "SCAN CONSTANT ROW" {
				t.Errorf("query plan of %s scans a table:\n%s", c.name, strings.Join(plan, "\n"))
				break
			}
		}
	}
}

// A home made when etb_tasks had full indexes on parent and root, and
// etb_executions one on time and none of its open executions, loses the
// full ones when it is opened and gains the partial ones.
func TestTaskIndexMigration(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g := open(t, dir)
	for _, q := range []string{
		`DROP INDEX etb_tasks_children`, `DROP INDEX etb_executions_task`, `DROP INDEX etb_executions_open`,
		`CREATE INDEX etb_tasks_parent ON etb_tasks(parent)`, `CREATE INDEX etb_tasks_root ON etb_tasks(root)`,
		`CREATE INDEX etb_executions_time ON etb_executions(time)`,
	} {
		if _, err := g.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	g.Close()
	g = open(t, dir)
	names := queryStrings(t, g, `SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name IN ('etb_tasks', 'etb_executions') AND sql IS NOT NULL ORDER BY name`)
	if want := []string{"etb_executions_open", "etb_executions_task", "etb_tasks_children"}; !slices.Equal(names, want) {
		t.Fatalf("indexes after opening an old home: %v, want %v", names, want)
	}
}
