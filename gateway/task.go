package gateway

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Task state is what flow policies and limits decide on, beside the action
// itself (action.Task): the task's place in the tree (root, parent), its
// labels and those of its ancestors, the window of its recent decisions,
// the usage of every limit slot the action is subject to, and the version
// of that state.
//
// Invariants:
//   - Every change of a task's state is written by a ledger sidecar, in the
//     same transaction as the event that causes it (the intent and decision
//     of an action; the end of a permitted action whose rules add labels).
//     The state can never say something the ledger does not.
//   - Decisions of one task are serialised by the task's lock, held from
//     reading the state to the durable append of the decision; the end of
//     an action that adds labels takes the same lock. Within one gateway
//     process no decision can be made on state that a concurrent one is
//     changing, so the state version each decision records is exact.
//   - Limit slots are serialised by one lock held from reading usage to the
//     durable reservation, so concurrent callers cannot both spend the last
//     unit of a window.
//   - Labels only grow. A task's effective labels are its own and every
//     ancestor's (a child sees labels its parent gains after it started).
const taskSchema = `
CREATE TABLE IF NOT EXISTS etb_tasks(
	id TEXT PRIMARY KEY, root TEXT NOT NULL, parent TEXT NOT NULL,
	ancestors TEXT NOT NULL,      -- JSON list, root first, excluding id
	version INTEGER NOT NULL,     -- state version: one per decision and per label change
	recent TEXT NOT NULL,         -- JSON list of action.Recent, oldest first
	delegation TEXT NOT NULL,     -- jti of the delegation the task belongs to ('' if none), inherited by child tasks
	created TEXT NOT NULL);
-- Most tasks are roots made for one action (the task of an execution that
-- names none has the execution's id). Every index row costs a page in the
-- commit of the decision that makes the task (docs/PERFORMANCE.md), so the
-- indexes leave such tasks out: a task's children are found by the partial
-- index on parent (a query must say parent != '' to use it); a task's
-- executions are the one whose id is the task's, found by primary key, and
-- those in etb_executions_task (task != id); a tree is walked from its root
-- through the children. Homes made before lose the full indexes here.
DROP INDEX IF EXISTS etb_tasks_parent;
DROP INDEX IF EXISTS etb_tasks_root;
CREATE INDEX IF NOT EXISTS etb_tasks_children ON etb_tasks(parent) WHERE parent != '';
CREATE INDEX IF NOT EXISTS etb_executions_task ON etb_executions(task) WHERE task != id;
CREATE TABLE IF NOT EXISTS etb_task_labels(task TEXT NOT NULL, label TEXT NOT NULL, execution TEXT NOT NULL,
	PRIMARY KEY(task, label));
CREATE TABLE IF NOT EXISTS etb_limit_usage(slot TEXT NOT NULL, execution TEXT NOT NULL, cost REAL NOT NULL,
	unix_nano INTEGER NOT NULL, PRIMARY KEY(slot, execution));
CREATE INDEX IF NOT EXISTS etb_limit_usage_window ON etb_limit_usage(slot, unix_nano);
`

// maxTaskDepth bounds how deep a task tree may grow (parent links).
const maxTaskDepth = 64

// taskState is what Begin read about a task before deciding, and what the
// append of its decision must write back.
type taskState struct {
	id, root, parent string
	ancestors        []string // root first
	exists           bool
	delegation       string // the delegation whose grant actions in this task need
	version          int64
	labels           []string
	recent           []action.Recent
}

// keyedLocks hands out one mutex per key, dropping it when unused.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks key's mutex and returns its unlock.
func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

func (g *Gateway) createTaskTables(ctx context.Context) error {
	if _, err := g.db.ExecContext(ctx, taskSchema); err != nil {
		return fmt.Errorf("gateway: create task tables: %w", err)
	}
	return nil
}

// loadTask reads the state of task id. For a task not seen before it
// places the task under parent (which must exist) or makes it a root; a
// parent that contradicts the recorded one is an error.
func (g *Gateway) loadTask(ctx context.Context, id, parent string) (*taskState, error) {
	// Decisions read task state right after the previous batch committed:
	// the appending connection, when idle, still holds those pages. The
	// reads take microseconds and are not cut short by the request's end:
	// with a context that cannot end, the SQLite driver and database/sql
	// start no goroutine per query to watch it.
	ctx = context.WithoutCancel(ctx)
	var st *taskState
	read := func(q ledger.Querier) (err error) {
		st, err = g.readTask(ctx, q, id, parent)
		return err
	}
	if ok, err := g.st.ReadWarm(ctx, read); ok {
		return st, err
	}
	return st, read(pooled{g})
}

// readTask is loadTask's reading through q.
func (g *Gateway) readTask(ctx context.Context, q ledger.Querier, id, parent string) (*taskState, error) {
	st := &taskState{id: id}
	var anc, recent string
	err := q.QueryRowContext(ctx, `SELECT root, parent, ancestors, version, recent, delegation FROM etb_tasks WHERE id = ?`, id).
		Scan(&st.root, &st.parent, &anc, &st.version, &recent, &st.delegation)
	switch {
	case err == nil:
		st.exists = true
		if parent != "" && parent != st.parent {
			return nil, fmt.Errorf("gateway: task %s has parent %q, not %q", id, st.parent, parent)
		}
		if err := json.Unmarshal([]byte(anc), &st.ancestors); err != nil {
			return nil, fmt.Errorf("gateway: task %s ancestors: %w", id, err)
		}
		if err := json.Unmarshal([]byte(recent), &st.recent); err != nil {
			return nil, fmt.Errorf("gateway: task %s recent window: %w", id, err)
		}
	case errors.Is(err, sql.ErrNoRows):
		st.root, st.parent = id, parent
		if parent != "" {
			p, err := g.readTask(ctx, q, parent, "")
			if err != nil {
				return nil, err
			}
			if !p.exists {
				return nil, fmt.Errorf("gateway: parent task %s of task %s does not exist", parent, id)
			}
			if len(p.ancestors)+1 >= maxTaskDepth {
				return nil, fmt.Errorf("gateway: task %s would be %d levels deep, limit %d", id, len(p.ancestors)+2, maxTaskDepth)
			}
			st.root, st.delegation = p.root, p.delegation
			st.ancestors = append(append([]string{}, p.ancestors...), parent)
		}
	default:
		return nil, fmt.Errorf("gateway: read task %s: %w", id, err)
	}
	if st.ancestors == nil {
		st.ancestors = []string{}
	}
	if st.recent == nil {
		st.recent = []action.Recent{}
	}
	if !st.exists && parent == "" {
		// A new root task has no labels yet: nothing to read.
		st.labels = []string{}
		return st, nil
	}
	labels, err := taskLabels(ctx, q, append(append([]string{}, st.ancestors...), id))
	if err != nil {
		return nil, err
	}
	st.labels = labels
	return st, nil
}

// lockTask locks task id for a decision, with every ancestor (root first,
// the one order every caller uses, so locks cannot deadlock): a label an
// ancestor gains is a change of this task's state too. It returns the
// task's state read under the locks.
func (g *Gateway) lockTask(ctx context.Context, id, parent string, fresh bool) (func(), *taskState, error) {
	unlock := g.taskLocks.lock(id)
	if fresh {
		// A task id the gateway just made up (the execution's own): no
		// state to read.
		return unlock, &taskState{id: id, root: id, ancestors: []string{}, labels: []string{}, recent: []action.Recent{}}, nil
	}
	st, err := g.loadTask(ctx, id, parent)
	if err != nil || len(st.ancestors) == 0 {
		if err != nil {
			unlock()
			return nil, nil, err
		}
		return unlock, st, nil
	}
	// Ancestors never change once a task exists (nor the parent's, which a
	// new task's come from): lock them, root first, then read again.
	unlock()
	var unlocks []func()
	for _, t := range append(append([]string{}, st.ancestors...), id) {
		unlocks = append(unlocks, g.taskLocks.lock(t))
	}
	unlockAll := func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
	if st, err = g.loadTask(ctx, id, parent); err != nil {
		unlockAll()
		return nil, nil, err
	}
	return unlockAll, st, nil
}

// taskLabels returns the sorted union of the labels of tasks.
func taskLabels(ctx context.Context, q ledger.Querier, tasks []string) ([]string, error) {
	// One statement per depth of the task tree, prepared once.
	query := `SELECT DISTINCT label FROM etb_task_labels WHERE task IN (` + strings.TrimSuffix(strings.Repeat("?,", len(tasks)), ",") + `) ORDER BY label`
	args := make([]any, len(tasks))
	for i, t := range tasks {
		args[i] = t
	}
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("gateway: read task labels: %w", err)
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// usage returns how much of slot was used in the window ending at now.
func (g *Gateway) usage(ctx context.Context, slot string, window time.Duration, now time.Time) (float64, error) {
	var used float64
	err := g.queryRow(ctx, `SELECT COALESCE(SUM(cost), 0) FROM etb_limit_usage WHERE slot = ? AND unix_nano > ?`,
		slot, now.Add(-window).UnixNano()).Scan(&used)
	if err != nil {
		return 0, fmt.Errorf("gateway: read usage of %s: %w", slot, err)
	}
	return used, nil
}

// nextRecent is the task's recent window after the decision d on spec.
func nextRecent(recent []action.Recent, spec action.Spec, d policy.Decision) []action.Recent {
	r := action.Recent{Kind: spec.Kind, Name: spec.Name, Host: spec.Target.Host, Decision: d.Decision}
	out := append(append([]action.Recent{}, recent...), r)
	if len(out) > action.MaxRecent {
		out = out[len(out)-action.MaxRecent:]
	}
	return out
}

// writeTaskDecision records, inside the ledger transaction of the intent
// and decision of ex, the task state the decision changes: the task row
// (created on first use), the recent window and the version, and the
// reservations of a permit on its limit slots.
func writeTaskDecision(ctx context.Context, tx ledger.SQLExecer, ex *Execution, st *taskState, when time.Time) error {
	recent, err := json.Marshal(nextRecent(st.recent, ex.Action.Action, ex.Decision))
	if err != nil {
		return err
	}
	if !st.exists {
		anc, err := json.Marshal(st.ancestors)
		if err != nil {
			return err
		}
		if err := insertRow(ctx, tx, "etb_tasks", "id, root, parent, ancestors, version, recent, delegation, created",
			st.id, st.root, st.parent, string(anc), st.version+1, string(recent), st.delegation, ex.Action.Time); err != nil {
			return fmt.Errorf("gateway: create task %s: %w", st.id, err)
		}
	} else {
		// The version check makes a concurrent writer in another process
		// fail this batch instead of silently forking the state.
		res, err := tx.ExecContext(ctx, `UPDATE etb_tasks SET version = ?, recent = ? WHERE id = ? AND version = ?`,
			st.version+1, string(recent), st.id, st.version)
		if err != nil {
			return fmt.Errorf("gateway: update task %s: %w", st.id, err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return fmt.Errorf("gateway: task %s changed under decision %s (state version %d is stale)", st.id, ex.ID, st.version)
		}
	}
	if ex.Decision.Decision == policy.Permit || ex.Decision.Decision == policy.RequireApproval {
		for _, r := range ex.Decision.Reservations {
			if err := insertRow(ctx, tx, "etb_limit_usage", "slot, execution, cost, unix_nano",
				r.Slot, ex.ID, r.Cost, when.UnixNano()); err != nil {
				return fmt.Errorf("gateway: reserve %v of %s: %w", r.Cost, r.Slot, err)
			}
		}
	}
	return nil
}

// endAddsLabels reports whether e is the successful end of a permitted
// execution whose decision adds labels to its task.
func endAddsLabels(ex *Execution, e *lineage.Event) bool {
	if e.Type != lineage.TypeEnd || ex.Decision.Decision != policy.Permit || len(ex.Decision.LabelsToAdd) == 0 {
		return false
	}
	var b lineage.EndBody
	return e.DecodeBody(&b) == nil && b.ExitCode == 0 && b.Signal == ""
}

// writeTaskOutcome records, inside the ledger transaction of the end or
// interrupt event e of ex, what the outcome changes: the labels a
// successful end adds to the task (and the task's version), and the
// settlement of the execution's reservations (the actual cost the end
// reports, or nothing at all when the action was interrupted before it
// started).
func writeTaskOutcome(ctx context.Context, tx ledger.SQLExecer, ex *Execution, e *lineage.Event, started bool) error {
	switch e.Type {
	case lineage.TypeEnd:
		var b lineage.EndBody
		if err := e.DecodeBody(&b); err != nil {
			return err
		}
		if b.Cost != nil && len(ex.Decision.Reservations) > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE etb_limit_usage SET cost = ? WHERE execution = ?`, *b.Cost, ex.ID); err != nil {
				return fmt.Errorf("gateway: settle the reservations of %s: %w", ex.ID, err)
			}
		}
		if !endAddsLabels(ex, e) {
			return nil
		}
		added := 0
		for _, l := range ex.Decision.LabelsToAdd {
			res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO etb_task_labels(task, label, execution) VALUES(?,?,?)`, ex.Action.Task.ID, l, ex.ID)
			if err != nil {
				return fmt.Errorf("gateway: add label %s to task %s: %w", l, ex.Action.Task.ID, err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				added++
			}
		}
		if added > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE etb_tasks SET version = version + 1 WHERE id = ?`, ex.Action.Task.ID); err != nil {
				return fmt.Errorf("gateway: bump task %s: %w", ex.Action.Task.ID, err)
			}
		}
	case lineage.TypeInterrupt:
		if !started && len(ex.Decision.Reservations) > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE etb_limit_usage SET cost = 0 WHERE execution = ?`, ex.ID); err != nil {
				return fmt.Errorf("gateway: release the reservations of %s: %w", ex.ID, err)
			}
		}
	}
	return nil
}

// TaskNode is one task of a tree as `etb log tree` shows it.
type TaskNode struct {
	ID, Parent string
	Labels     []string
	Executions []TaskExecution
	Children   []*TaskNode
}

// TaskExecution is one execution of a task in the tree.
type TaskExecution struct {
	Summary
	// Duration is from the first to the last event; Interrupts are the
	// reasons of its interrupt events.
	Duration   time.Duration
	Interrupts []string
}

// ResolveTask returns the task id given in part, and the root of its task
// tree: the id itself, a unique prefix, or a unique start of its last 12
// characters (lineage.ShortID). The prefix is a range scan of the primary
// key; the tail is looked for among the task ids of executions (a root
// task's id is its first execution's), then among all tasks.
func (g *Gateway) ResolveTask(ctx context.Context, part string) (id, root string, err error) {
	if part == "" {
		return "", "", errors.New("gateway: empty task id")
	}
	switch err := g.db.QueryRowContext(ctx, `SELECT root FROM etb_tasks WHERE id = ?`, part).Scan(&root); {
	case err == nil:
		return part, root, nil
	case !errors.Is(err, sql.ErrNoRows):
		return "", "", err
	}
	if len(part) <= 12 {
		g.indexTails(ctx)
	}
	rows, err := g.db.QueryContext(ctx, `
		SELECT id, root FROM etb_tasks WHERE id >= ?1 AND id < ?1 || char(1114111)
		UNION
		SELECT id, root FROM etb_tasks WHERE length(?1) <= 12 AND id IN (`+tailMatch+`)
		LIMIT 3`, part)
	if err != nil {
		return "", "", err
	}
	ids, roots, err := scanTaskRoots(rows)
	if err != nil {
		return "", "", err
	}
	if len(ids) == 0 && len(part) <= 12 {
		// A delegated task's id is not an execution's: scan.
		rows, err := g.db.QueryContext(ctx, `SELECT id, root FROM etb_tasks
			WHERE substr(id, 21) >= ?1 AND substr(id, 21) < ?1 || char(1114111) LIMIT 3`, part)
		if err != nil {
			return "", "", err
		}
		if ids, roots, err = scanTaskRoots(rows); err != nil {
			return "", "", err
		}
	}
	switch len(ids) {
	case 0:
		return "", "", fmt.Errorf("gateway: no task %q", part)
	case 1:
		return ids[0], roots[0], nil
	}
	return "", "", fmt.Errorf("gateway: task id %q is ambiguous: more than one task's id begins or ends with it; give more of it", part)
}

func scanTaskRoots(rows *sql.Rows) (ids, roots []string, err error) {
	defer rows.Close()
	for rows.Next() {
		var i, r string
		if err := rows.Scan(&i, &r); err != nil {
			return nil, nil, err
		}
		ids, roots = append(ids, i), append(roots, r)
	}
	return ids, roots, rows.Err()
}

// taskTreeQuery selects task ?1 and every task below it, with its parent.
const taskTreeQuery = `WITH RECURSIVE t(id, parent) AS (
	SELECT id, parent FROM etb_tasks WHERE id = ?1
	UNION SELECT c.id, c.parent FROM t CROSS JOIN etb_tasks c ON c.parent = t.id AND c.parent != '')
	SELECT id, parent FROM t`

// TaskTree returns the tree of tasks under task (inclusive), each with its
// executions in time order.
func (g *Gateway) TaskTree(ctx context.Context, task string) (*TaskNode, error) {
	nodes := map[string]*TaskNode{}
	var order []string
	rows, err := g.db.QueryContext(ctx, taskTreeQuery, task)
	if err != nil {
		return nil, fmt.Errorf("gateway: task tree of %s: %w", task, err)
	}
	for rows.Next() {
		n := &TaskNode{}
		if err := rows.Scan(&n.ID, &n.Parent); err != nil {
			rows.Close()
			return nil, err
		}
		nodes[n.ID] = n
		order = append(order, n.ID)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	root := nodes[task]
	if root == nil {
		return nil, fmt.Errorf("gateway: no task %s", task)
	}
	for _, id := range order {
		n := nodes[id]
		if id != task {
			if p := nodes[n.Parent]; p != nil {
				p.Children = append(p.Children, n)
			}
		}
		labels, err := taskLabels(ctx, pooled{g}, []string{id})
		if err != nil {
			return nil, err
		}
		n.Labels = labels
		if n.Executions, err = g.taskExecutions(ctx, id); err != nil {
			return nil, err
		}
	}
	for _, n := range nodes {
		sort.Slice(n.Children, func(i, j int) bool { return firstTime(n.Children[i]) < firstTime(n.Children[j]) })
	}
	return root, nil
}

func firstTime(n *TaskNode) string {
	if len(n.Executions) == 0 {
		return ""
	}
	return n.Executions[0].Time
}

// taskExecutionsQuery selects the executions of task ?1 in time order: its
// own (id = task) by primary key, the rest through etb_executions_task.
const taskExecutionsQuery = `
	SELECT id, time, agent, kind, name, args, decision, rules, outcome, task
		FROM etb_executions WHERE id = ?1 AND task = ?1
	UNION ALL
	SELECT id, time, agent, kind, name, args, decision, rules, outcome, task
		FROM etb_executions INDEXED BY etb_executions_task WHERE task = ?1 AND task != id
	ORDER BY time, id`

func (g *Gateway) taskExecutions(ctx context.Context, task string) ([]TaskExecution, error) {
	rows, err := g.db.QueryContext(ctx, taskExecutionsQuery, task)
	if err != nil {
		return nil, fmt.Errorf("gateway: executions of task %s: %w", task, err)
	}
	var out []TaskExecution
	for rows.Next() {
		var s Summary
		if err := rows.Scan(&s.ID, &s.Time, &s.Agent, &s.Kind, &s.Name, &s.Args, &s.Decision, &s.Rules, &s.Outcome, &s.Task); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, TaskExecution{Summary: s})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		events, _, err := g.Events(ctx, out[i].ID)
		if err != nil {
			return nil, err
		}
		first, _ := time.Parse(time.RFC3339Nano, events[0].Time)
		last, _ := time.Parse(time.RFC3339Nano, events[len(events)-1].Time)
		out[i].Duration = last.Sub(first)
		for _, e := range events {
			if e.Type == lineage.TypeInterrupt {
				var b lineage.InterruptBody
				if e.DecodeBody(&b) == nil {
					out[i].Interrupts = append(out[i].Interrupts, b.Reason)
				}
			}
		}
	}
	return out, nil
}

// treeExecutions defines, for a WITH RECURSIVE clause, t(id): the task ?1
// and every task below it, walked through etb_tasks_children; and xs(id,
// agent): the executions of those tasks, each task's own execution (id =
// task) by primary key and the rest through etb_executions_task. No part
// scans a table (TestTaskQueriesSearch): CROSS JOIN keeps the planner,
// which has no statistics, from scanning a table to probe the tree.
const treeExecutions = `t(id) AS (
		SELECT id FROM etb_tasks WHERE id = ?1
		UNION SELECT c.id FROM t CROSS JOIN etb_tasks c ON c.parent = t.id AND c.parent != ''),
	xs(id, agent) AS (
		SELECT x.id, x.agent FROM t CROSS JOIN etb_executions x ON x.id = t.id AND x.task = t.id
		UNION ALL
		SELECT x.id, x.agent FROM t CROSS JOIN etb_executions x INDEXED BY etb_executions_task
			ON x.task = t.id AND x.task != x.id)`

// treeExecutionIDsQuery selects the executions of the task tree under ?1
// in ledger order of their first event.
const treeExecutionIDsQuery = `WITH RECURSIVE ` + treeExecutions + `
	SELECT xs.id FROM xs CROSS JOIN etb_events e ON e.execution = xs.id AND e.seq = 0 ORDER BY e.idx`

// agentInTree is 1 if agent ?2 made an execution in the task tree under ?1.
const agentInTree = `WITH RECURSIVE ` + treeExecutions + `
	SELECT EXISTS(SELECT 1 FROM xs WHERE agent = ?2)`

// TaskExecutionIDs returns every execution of the task tree under task,
// in ledger order of their first event.
func (g *Gateway) TaskExecutionIDs(ctx context.Context, task string) ([]string, error) {
	rows, err := g.db.QueryContext(ctx, treeExecutionIDsQuery, task)
	if err != nil {
		return nil, fmt.Errorf("gateway: executions of task tree %s: %w", task, err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
