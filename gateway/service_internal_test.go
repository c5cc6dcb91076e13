package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/lineage"
)

// clockedService opens a gateway on a clock the test moves (advance) and
// its service; the gateway is closed when the test ends.
func clockedService(t *testing.T) (s *Service, g *Gateway, clock func() time.Time, advance func(time.Duration)) {
	t.Helper()
	var mu sync.Mutex
	now := time.Now()
	clock = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance = func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	g, err := Open(context.Background(), t.TempDir(), Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	s, err = NewService(context.Background(), g, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s, g, clock, advance
}

// An execution whose lease expired long ago is dropped from memory, and a
// later request rebuilds it from the ledger chain: the next event links to
// the last recorded one.
func TestSweepDropsStaleAndRebuildsFromLedger(t *testing.T) {
	ctx := context.Background()
	s, g, clock, advance := clockedService(t)
	ex, err := g.begin(ctx, echoAction(t, "sweep"), beginOptions{})
	if err != nil {
		t.Fatal(err)
	}
	le := s.register(ctx, ex, "")
	le.lease = clock().Add(time.Second)
	le.mu.Lock()
	if _, err := s.recordAs(ctx, le, lineage.TypeStart, "spiffe://etb.local/enforcer/x", lineage.StartBody{PID: 1, GrantJTI: ex.Claims.ID}); err != nil {
		t.Fatal(err)
	}
	le.started = true
	le.mu.Unlock()

	if stale := s.maybeSweep(); len(stale) != 0 {
		t.Fatal("fresh execution swept")
	}
	if _, ok := s.live[ex.ID]; !ok {
		t.Fatal("fresh execution dropped")
	}
	advance(2 * staleAfter)
	if stale := s.maybeSweep(); len(stale) != 1 || stale[0] != le {
		t.Fatalf("stale %v", stale)
	}
	if _, ok := s.live[ex.ID]; ok {
		t.Fatal("stale execution kept")
	}
	s.live[ex.ID] = le
	advance(sweepEvery / 2)
	if stale := s.maybeSweep(); len(stale) != 0 {
		t.Fatalf("swept again within %v", sweepEvery)
	}
	delete(s.live, ex.ID)
	stale := []*liveExec{le}
	s.closeStale(ctx, stale)

	// Rebuilt from the ledger, the execution has ended; the chain holds
	// the gateway's interruption.
	le2, err := s.lookup(ctx, ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	if le2 == le || !le2.started || le2.terminal != "interrupted: lease_expired" || le2.ex.Token != ex.Token || le2.principal != ex.Action.Principal.ID {
		t.Fatalf("rebuilt state: started %v, terminal %q, principal %q", le2.started, le2.terminal, le2.principal)
	}
	events, _, err := g.Events(ctx, ex.ID) // verifies the chain
	if err != nil || len(events) != 5 || events[4].Type != lineage.TypeInterrupt || events[4].Actor != g.cfg.Issuer {
		t.Fatalf("chain after sweep: %d events, %v", len(events), err)
	}
	if _, err := s.lookup(ctx, "0000000000000000000000000000dead"); err == nil {
		t.Fatal("unknown execution looked up")
	}
}

// A permit never started is swept as soon as its lease has expired (it can
// no longer start or renew), not a minute later, and its end is recorded; a
// started one is still given staleAfter to report its own end.
func TestSweepClosesNeverStartedAtLeaseExpiry(t *testing.T) {
	ctx := context.Background()
	s, g, clock, advance := clockedService(t)
	var les []*liveExec
	for _, name := range []string{"idle", "running"} {
		ex, err := g.begin(ctx, echoAction(t, name), beginOptions{})
		if err != nil {
			t.Fatal(err)
		}
		le := s.register(ctx, ex, "")
		le.lease = clock().Add(time.Second)
		les = append(les, le)
	}
	idle, running := les[0], les[1]
	running.mu.Lock()
	if _, err := s.recordAs(ctx, running, lineage.TypeStart, "spiffe://etb.local/enforcer/x", lineage.StartBody{PID: 1, GrantJTI: running.ex.Claims.ID}); err != nil {
		t.Fatal(err)
	}
	running.started = true
	running.mu.Unlock()

	// Within the lease, nothing is swept.
	advance(999 * time.Millisecond)
	if stale := s.maybeSweep(); len(stale) != 0 {
		t.Fatalf("swept %d executions within their lease", len(stale))
	}
	// At its expiry, the idle permit goes; the running one stays.
	advance(sweepEvery)
	stale := s.maybeSweep()
	if len(stale) != 1 || stale[0] != idle {
		t.Fatalf("swept %v after the lease expired, want the never-started permit alone", stale)
	}
	if _, ok := s.live[running.ex.ID]; !ok {
		t.Fatal("the started execution was dropped before staleAfter")
	}
	s.closeStale(ctx, stale)
	le, err := s.lookup(ctx, idle.ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	if le.started || le.terminal != "interrupted: lease_expired" {
		t.Fatalf("the swept permit, rebuilt: started %v, terminal %q", le.started, le.terminal)
	}
	events, _, err := g.Events(ctx, idle.ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	last := events[len(events)-1]
	var body lineage.InterruptBody
	if err := json.Unmarshal(last.Body, &body); err != nil || last.Type != lineage.TypeInterrupt || body.Reason != "lease_expired" || !strings.HasPrefix(body.Detail, "never started") {
		t.Fatalf("the swept permit's last event: %s %s (%v)", last.Type, last.Body, err)
	}
	advance(staleAfter)
	if stale := s.maybeSweep(); len(stale) != 1 || stale[0] != running {
		t.Fatalf("swept %v a minute after the lease, want the started execution", stale)
	}
}

// closeStale records the interruptions of many swept permits concurrently,
// so that they share ledger commits: each is closed, and the commits are
// fewer than the executions.
func TestCloseStaleSharesCommits(t *testing.T) {
	ctx := context.Background()
	s, g, clock, advance := clockedService(t)
	const n = 96
	for i := range n {
		ex, err := g.begin(ctx, echoAction(t, fmt.Sprint("idle-", i)), beginOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.register(ctx, ex, "").lease = clock().Add(time.Second)
	}
	advance(2 * time.Second)
	stale := s.maybeSweep()
	if len(stale) != n {
		t.Fatalf("swept %d of %d never-started permits", len(stale), n)
	}
	before := g.LogStats()
	s.closeStale(ctx, stale)
	after := g.LogStats()
	for _, le := range stale {
		if le.terminal != "interrupted: lease_expired" {
			t.Fatalf("%s not closed: %q", le.ex.ID, le.terminal)
		}
	}
	entries, batches := after.Entries-before.Entries, after.Batches-before.Batches
	if entries != n || batches >= n {
		t.Fatalf("closing %d permits appended %d entries in %d commits; want %d entries in fewer commits", n, entries, batches, n)
	}
	t.Logf("%d interruptions in %d commits", entries, batches)
}

// The permits of a previous run that never started are closed once their
// grants have expired, by the next run's Sweep (at once, and again after a
// grant's lifetime): not the ones still usable, not a started one, not one
// of the new run, and Sweep returns when its context ends.
func TestSweepClosesExpiredPermitsOfAPreviousRun(t *testing.T) {
	ctx := context.Background()
	prev, g, clock, advance := clockedService(t)
	begin := func(s *Service, name string) *liveExec {
		ex, err := g.begin(ctx, echoAction(t, name), beginOptions{})
		if err != nil {
			t.Fatal(err)
		}
		le := s.register(ctx, ex, "")
		le.lease = clock().Add(time.Second)
		return le
	}
	idle, running := begin(prev, "idle"), begin(prev, "running")
	running.mu.Lock()
	if _, err := prev.recordAs(ctx, running, lineage.TypeStart, "spiffe://etb.local/enforcer/x", lineage.StartBody{PID: 1, GrantJTI: running.ex.Claims.ID}); err != nil {
		t.Fatal(err)
	}
	running.started = true
	running.mu.Unlock()

	// The next run of the service, on the same home.
	s, err := NewService(ctx, g, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fresh := begin(s, "fresh")
	last := func(id string) string {
		events, _, err := g.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		e := events[len(events)-1]
		return e.Type + " " + string(e.Body)
	}
	// Within the grants' lifetime nothing is closed: the idle permit's
	// grant could still be presented.
	if err := s.closeExpiredPermits(ctx); err != nil {
		t.Fatal(err)
	}
	if got := last(idle.ex.ID); !strings.HasPrefix(got, lineage.TypeGrant) {
		t.Fatalf("the previous run's idle permit within its grant's lifetime ends with %s", got)
	}
	advance(g.cfg.GrantTTL.D() + g.cfg.ClockSkew.D() + time.Second)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var failures []error
	go func() { defer close(done); s.Sweep(sctx, func(err error) { failures = append(failures, err) }) }()
	for deadline := time.Now().Add(10 * time.Second); !strings.HasPrefix(last(idle.ex.ID), lineage.TypeInterrupt); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the previous run's expired permit was not closed: %s", last(idle.ex.ID))
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Sweep did not return when its context ended")
	}
	if len(failures) != 0 {
		t.Fatalf("sweep failures: %v", failures)
	}
	if got := last(idle.ex.ID); !strings.Contains(got, "lease_expired") || !strings.Contains(got, "never started; its grant expired at") {
		t.Fatalf("the expired permit ends with %s", got)
	}
	if got := last(running.ex.ID); !strings.HasPrefix(got, lineage.TypeStart) {
		t.Fatalf("the started execution ends with %s", got)
	}
	if got := last(fresh.ex.ID); !strings.HasPrefix(got, lineage.TypeGrant) {
		t.Fatalf("the new run's permit ends with %s", got)
	}
	s.mu.Lock()
	_, kept := s.live[idle.ex.ID]
	s.mu.Unlock()
	if kept {
		t.Fatal("the closed permit is still in memory")
	}
}
