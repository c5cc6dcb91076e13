package gateway

import (
	"context"
	"strings"
	"testing"

	"github.com/etbproject/etb/lineage"
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
