package gateway

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/lineage"
)

// An execution whose lease expired long ago is dropped from memory, and a
// later request rebuilds it from the ledger chain: the next event links to
// the last recorded one.
func TestSweepDropsStaleAndRebuildsFromLedger(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	g, err := Open(ctx, t.TempDir(), Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	s, err := NewService(ctx, g, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
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
	advance := func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
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
