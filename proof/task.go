package proof

import (
	"fmt"
	"slices"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// groupExecutions splits events (in ledger order, indexes[i] the ledger
// index of events[i]) by execution, in the order of each execution's first
// event. Within a group the events keep their order.
func groupExecutions(events []*lineage.Event, indexes []uint64) []*execution {
	var execs []*execution
	byID := map[string]*execution{}
	for i, e := range events {
		x := byID[e.Execution]
		if x == nil {
			x = &execution{id: e.Execution}
			byID[e.Execution] = x
			execs = append(execs, x)
		}
		x.events = append(x.events, e)
		x.indexes = append(x.indexes, indexes[i])
	}
	return execs
}

// taskParents returns the parent of every task of a tree: the parent_id
// its intents record, and for a task a delegation created (its id is the
// delegation's execution id) the delegator's task. It checks that every
// intent names root as its root, that a task's intents agree on its
// parent, and that every task reaches root through parents in the tree.
// Failures are CheckTask.
func taskParents(root string, execs []*execution) (map[string]string, error) {
	parent := map[string]string{}
	set := func(task, p, why string) error {
		if old, ok := parent[task]; ok && old != p {
			return fail(CheckTask, "task %s has parent %q and, by %s, %q", task, old, why, p)
		}
		parent[task] = p
		return nil
	}
	for _, x := range execs {
		t := x.st.intent.Action.Task
		if t.RootID != root {
			return nil, fail(CheckTask, "execution %s: task %s has root %q, the bundle is for task %s", x.id, t.ID, t.RootID, root)
		}
		if e := x.events[0]; e.Task != t.ID || e.Parent != t.ParentID {
			return nil, fail(CheckTask, "execution %s: events name task %s (parent %q), the intent task %s (parent %q)", x.id, e.Task, e.Parent, t.ID, t.ParentID)
		}
		if err := set(t.ID, t.ParentID, "execution "+x.id); err != nil {
			return nil, err
		}
		if x.st.intent.Action.Action.Kind == grant.KindDelegate && x.st.grant != nil {
			if err := set(x.id, t.ID, "delegation "+x.id); err != nil {
				return nil, err
			}
		}
	}
	if p, ok := parent[root]; !ok || p != "" {
		return nil, fail(CheckTask, "root task %s has no execution in the bundle, or a parent (%q)", root, p)
	}
	for task := range parent {
		cur := task
		for n := 0; cur != root; n++ {
			p, ok := parent[cur]
			if !ok || p == "" || n > len(parent) {
				return nil, fail(CheckTask, "task %s does not reach root task %s through tasks of the bundle (stuck at %q)", task, root, cur)
			}
			cur = p
		}
	}
	return parent, nil
}

// checkTree is the CheckTask check of a task bundle.
func checkTree(root string, execs []*execution) error {
	_, err := taskParents(root, execs)
	return err
}

// labelGrant is a set of labels a task gained at a ledger index: the
// successful end of a permitted execution whose decision adds labels.
type labelGrant struct {
	task      string
	execution string
	index     uint64
	labels    []string
}

// checkTaskState re-derives, from the tree's own record, the task state
// every decision of a task bundle was made on, and compares it with the
// state the intent records (action.task). Walking the intents of each task
// in ledger order:
//
//   - state_version strictly increases;
//   - recent is exactly the last action.MaxRecent (kind, name, host,
//     decision) of the task's earlier decisions, oldest first;
//   - labels are exactly the labels_to_add of the permitted executions of
//     the task and of its ancestors whose successful end (exit 0, no
//     signal) is at a lower ledger index than the intent.
//
// execs are in the order of their intents' ledger indexes. A mismatch is a
// CheckTaskState failure naming the execution.
func checkTaskState(root string, execs []*execution) error {
	parent, err := taskParents(root, execs)
	if err != nil {
		return err
	}
	var gains []labelGrant
	for _, x := range execs {
		d := x.st.decision
		if d.Decision != policy.Permit || len(d.LabelsToAdd) == 0 {
			continue
		}
		for i, e := range x.events {
			if e.Type != lineage.TypeEnd {
				continue
			}
			var b lineage.EndBody
			if err := e.DecodeBody(&b); err != nil {
				return fail(CheckTaskState, "execution %s: %v", x.id, err)
			}
			if b.ExitCode == 0 && b.Signal == "" {
				gains = append(gains, labelGrant{task: x.st.intent.Action.Task.ID, execution: x.id, index: x.indexes[i], labels: d.LabelsToAdd})
			}
		}
	}
	type taskFold struct {
		seen    bool
		version int64
		recent  []action.Recent
	}
	folds := map[string]*taskFold{}
	for _, x := range execs {
		a := x.st.intent.Action
		t := a.Task
		f := folds[t.ID]
		if f == nil {
			f = &taskFold{recent: []action.Recent{}}
			folds[t.ID] = f
		}
		if t.StateVersion < 0 || (f.seen && t.StateVersion <= f.version) {
			return fail(CheckTaskState, "execution %s: task %s state_version %d does not follow the task's previous %d", x.id, t.ID, t.StateVersion, f.version)
		}
		if !sameRecent(t.Recent, f.recent) {
			return fail(CheckTaskState, "execution %s: task %s recent window %v, its earlier decisions give %v", x.id, t.ID, t.Recent, f.recent)
		}
		if err := checkLabels(x, parent, gains); err != nil {
			return err
		}
		f.seen, f.version = true, t.StateVersion
		f.recent = append(f.recent, action.Recent{Kind: a.Action.Kind, Name: a.Action.Name, Host: a.Action.Target.Host, Decision: x.st.decision.Decision})
		if len(f.recent) > action.MaxRecent {
			f.recent = f.recent[len(f.recent)-action.MaxRecent:]
		}
	}
	return nil
}

// checkLabels checks that the labels x's intent records are exactly those
// gained by its task and the task's ancestors before the intent.
func checkLabels(x *execution, parent map[string]string, gains []labelGrant) error {
	t := x.st.intent.Action.Task
	line := map[string]bool{}
	for cur := t.ID; cur != ""; cur = parent[cur] {
		line[cur] = true
	}
	at := x.indexes[0]
	want := map[string]labelGrant{}
	for _, g := range gains {
		if g.index < at && line[g.task] {
			for _, l := range g.labels {
				if _, ok := want[l]; !ok {
					want[l] = g
				}
			}
		}
	}
	for l, g := range want {
		if !slices.Contains(t.Labels, l) {
			return fail(CheckTaskState, "execution %s: task %s lacks label %q, which execution %s (task %s) added at ledger index %d, before this intent at %d", x.id, t.ID, l, g.execution, g.task, g.index, at)
		}
	}
	for _, l := range t.Labels {
		if _, ok := want[l]; !ok {
			return fail(CheckTaskState, "execution %s: task %s has label %q, which no earlier successful execution of the task or its ancestors added", x.id, t.ID, l)
		}
	}
	return nil
}

func sameRecent(a, b []action.Recent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// foldTaskState is the task-state check over a task bundle's events alone
// (in ledger order, with their ledger indexes): it groups them, reads
// each execution's lifecycle and runs checkTaskState.
func foldTaskState(root string, events []*lineage.Event, indexes []uint64) error {
	if len(events) != len(indexes) {
		return fmt.Errorf("%d events, %d indexes", len(events), len(indexes))
	}
	execs := groupExecutions(events, indexes)
	for _, x := range execs {
		st, err := readLifecycle(x.events, true)
		if err != nil {
			return fail(CheckOrder, "execution %s: %v", x.id, err)
		}
		x.st = st
	}
	return checkTaskState(root, execs)
}
