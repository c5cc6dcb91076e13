package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// An execution is found by the random end of its id (what etb log prints)
// whether or not the lazy tail index covers it yet, and decisions never
// write that index: a lookup brings it up to date.
func TestResolveIDByTail(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	begin := func() string {
		t.Helper()
		ex, err := g.Begin(ctx, echoAction(t, "tail"))
		if err != nil {
			t.Fatal(err)
		}
		return ex.ID
	}
	count := func(query string) int {
		t.Helper()
		var n int
		if err := g.db.QueryRowContext(ctx, query).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var ids []string
	for range 5 {
		ids = append(ids, begin())
	}
	if n := count(`SELECT count(*) FROM etb_id_tails`); n != 0 {
		t.Fatalf("decisions wrote %d rows of the tail index, want none", n)
	}
	// Not indexed yet: the rowid range after the mark is scanned.
	var got string
	if err := g.db.QueryRowContext(ctx, `SELECT id FROM (`+tailMatch+`)`, lineage.ShortID(ids[2])).Scan(&got); err != nil || got != ids[2] {
		t.Fatalf("tailMatch %s before indexing: %q %v, want %s", lineage.ShortID(ids[2]), got, err, ids[2])
	}
	for i, id := range ids {
		short := lineage.ShortID(id)
		for _, part := range []string{short, short[:8], id[:24], id} {
			if got, err := g.ResolveID(ctx, part); err != nil || got != id {
				t.Errorf("ResolveID(%s) of execution %d: %q %v, want %s", part, i, got, err, id)
			}
		}
	}
	if n := count(`SELECT count(*) FROM etb_id_tails`); n != len(ids) {
		t.Fatalf("tail index has %d rows after lookups, want %d", n, len(ids))
	}
	// Executions after the mark are found too, and the next lookup
	// indexes them.
	late := begin()
	if n := count(`SELECT count(*) FROM etb_id_tails`); n != len(ids) {
		t.Fatalf("a decision changed the tail index: %d rows, want %d", n, len(ids))
	}
	if got, err := g.ResolveID(ctx, lineage.ShortID(late)); err != nil || got != late {
		t.Fatalf("ResolveID of an execution after the mark: %q %v, want %s", got, err, late)
	}
	if n := count(`SELECT count(*) FROM etb_id_tails`); n != len(ids)+1 {
		t.Fatalf("tail index has %d rows, want %d", n, len(ids)+1)
	}
	if _, err := g.ResolveID(ctx, "ffffffffffff"); err == nil || !strings.Contains(err.Error(), "no execution") {
		t.Fatalf("ResolveID of an unknown tail: %v", err)
	}
	// Both halves of tailMatch are searches, not scans of every execution.
	joined := strings.Join(queryPlan(t, g, `SELECT id FROM (`+tailMatch+`)`, "abc"), "\n")
	if strings.Contains(joined, "SCAN etb_executions") || strings.Contains(joined, "SCAN etb_id_tails") ||
		!strings.Contains(joined, "SEARCH etb_executions USING INTEGER PRIMARY KEY (rowid>?)") {
		t.Errorf("query plan of tailMatch:\n%s", joined)
	}
}

// A home made when the tail was an index of etb_executions loses that
// index when it is opened, and its executions are still found by tail.
func TestTailIndexMigration(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g := open(t, dir)
	ex, err := g.Begin(ctx, echoAction(t, "old"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.db.ExecContext(ctx, `CREATE INDEX etb_executions_tail ON etb_executions(substr(id, 21))`); err != nil {
		t.Fatal(err)
	}
	g.Close()
	g = open(t, dir)
	var n int
	if err := g.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE name = 'etb_executions_tail'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("old tail index still there: %d %v", n, err)
	}
	if got, err := g.ResolveID(ctx, lineage.ShortID(ex.ID)); err != nil || got != ex.ID {
		t.Fatalf("ResolveID after migration: %q %v, want %s", got, err, ex.ID)
	}
}

// List gives the newest executions first, in the reverse of the order their
// intents entered the ledger, and at most limit of them.
func TestListNewestFirst(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	var ids []string
	for i := range 4 {
		ex, err := g.Begin(ctx, echoAction(t, "list", string(rune('a'+i))))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ex.ID)
	}
	list, err := g.List(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.ID)
	}
	if want := []string{ids[3], ids[2], ids[1]}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("List(3) = %v, want %v", got, want)
	}
}

// queryPlan returns the steps of SQLite's plan for query q with args, one
// detail line per step (EXPLAIN QUERY PLAN).
func queryPlan(t testing.TB, g *Gateway, q string, args ...any) []string {
	t.Helper()
	rows, err := g.db.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatalf("plan of %s: %v", q, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan
}

// queryStrings returns the one text column of query q's rows.
func queryStrings(t testing.TB, g *Gateway, q string, args ...any) []string {
	t.Helper()
	rows, err := g.db.QueryContext(context.Background(), q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

// etb_executions_open holds the executions permitted and not yet ended, and
// nothing else; the revocation and sweep queries reach them through it,
// without scanning the executions (a home holds millions, few open).
func TestOpenExecutionsIndex(t *testing.T) {
	ctx := context.Background()
	s, g, _, _ := clockedService(t)
	const enforcer = "spiffe://etb.local/enforcer/x"
	begin := func(a *action.Action) *liveExec {
		t.Helper()
		ex, err := g.begin(ctx, a, beginOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s.register(ctx, ex, "")
	}
	record := func(le *liveExec, typ string, body any) {
		t.Helper()
		le.mu.Lock()
		defer le.mu.Unlock()
		if _, err := s.recordAs(ctx, le, typ, enforcer, body); err != nil {
			t.Fatalf("record %s: %v", typ, err)
		}
	}
	idle, running, ended, interrupted := begin(echoAction(t, "idle")), begin(echoAction(t, "running")), begin(echoAction(t, "ended")), begin(echoAction(t, "interrupted"))
	rm, err := enforce.DescribeExec([]string{"rm", "-rf", "/nonexistent-etb"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	denied, err := g.begin(ctx, &action.Action{Principal: action.Principal{ID: "spiffe://etb.local/user/1000"}, Action: rm}, beginOptions{})
	if err != nil || denied.Decision.Decision != policy.Deny {
		t.Fatalf("rm -rf: %+v %v, want a denial", denied, err)
	}
	for _, le := range []*liveExec{running, ended} {
		record(le, lineage.TypeStart, lineage.StartBody{PID: 1, GrantJTI: le.ex.Claims.ID})
	}
	record(ended, lineage.TypeEnd, lineage.EndBody{ExitCode: 0})
	record(interrupted, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "revoked"})

	open := queryStrings(t, g, revocationCandidatesQuery, KindDelegate, "")
	slices.Sort(open)
	want := []string{idle.ex.ID, running.ex.ID}
	slices.Sort(want)
	if !slices.Equal(open, want) {
		t.Fatalf("revocation candidates %v, want the idle and running permits %v", open, want)
	}

	for _, c := range []struct {
		name, query string
		args        []any
	}{
		{"revocationCandidates", revocationCandidatesQuery, []any{KindDelegate, ""}},
		{"expiredPermits", expiredPermitsQuery, []any{1 << 40, KindDelegate, "9999"}},
	} {
		plan := queryPlan(t, g, c.query, c.args...)
		if len(plan) != 1 || !strings.Contains(plan[0], "INDEX etb_executions_open") {
			t.Errorf("query plan of %s does not go through etb_executions_open:\n%s", c.name, strings.Join(plan, "\n"))
		}
	}
}

// BenchmarkRevokeOnALargeHome measures a revocation that matches nothing
// (an unknown agent) on a home of n ended executions and one open: the
// time to find the candidates, which should not grow with the executions
// that ended. Run with
//
//	go test ./gateway/ -run '^$' -bench RevokeOnALargeHome
func BenchmarkRevokeOnALargeHome(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		b.Run(fmt.Sprintf("ended=%d", n), func(b *testing.B) {
			ctx := context.Background()
			g, err := Open(ctx, b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			s, err := NewService(ctx, g, ServiceOptions{})
			if err != nil {
				b.Fatal(err)
			}
			ex, err := g.begin(ctx, echoAction(b, "open"), beginOptions{})
			if err != nil {
				b.Fatal(err)
			}
			s.register(ctx, ex, "")
			tx, err := g.db.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			st, err := tx.PrepareContext(ctx, `INSERT INTO etb_executions(id, time, agent, task, kind, name, args, decision, rules, outcome)
				VALUES(?1, ?2, 'spiffe://etb.local/agent/old', ?1, 'exec', 'echo', 'echo old', 'permit', 'allow-echo', 'exit 0')`)
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now().Add(-time.Hour)
			for i := range n {
				at := t0.Add(time.Duration(i) * time.Microsecond)
				if _, err := st.ExecContext(ctx, action.NewID(at), action.FormatTime(at)); err != nil {
					b.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				res, err := s.Revoke(ctx, "spiffe://etb.local/admin/bench", ScopeAgent, "spiffe://etb.local/agent/nobody")
				if err != nil || len(res.Revoked) != 0 {
					b.Fatalf("revoke: %+v %v", res, err)
				}
			}
		})
	}
}
