package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// liveExec is the in-memory state of one permitted execution. Its mu
// serializes everything that appends to the execution's chain.
type liveExec struct {
	ready chan struct{} // closed once loaded
	err   error         // load error, set before ready is closed

	mu        chanMutex
	ex        *Execution
	principal string
	holder    string
	started   bool
	terminal  string // "" while open; the outcome once ended
	revoked   string // reason, once revoked
	lease     time.Time
	watchers  map[chan watchMsg]struct{}
}

// chanMutex is a mutex whose Lock can be abandoned when a context ends.
type chanMutex chan struct{}

func newChanMutex() chanMutex { return make(chanMutex, 1) }

func (m chanMutex) Lock()   { m <- struct{}{} }
func (m chanMutex) Unlock() { <-m }

// LockContext locks m or returns ctx's error.
func (m chanMutex) LockContext(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// register caches a freshly begun permitted execution. If the execution
// is already cached (a concurrent revocation loaded it from the ledger),
// the cached state wins: it is the one whose chain is current. A
// revocation requested while the execution was being begun applies to it.
func (s *Service) register(ctx context.Context, ex *Execution, holder string) *liveExec {
	s.mu.Lock()
	le, ok := s.live[ex.ID]
	if !ok {
		le = &liveExec{ready: make(chan struct{}), mu: newChanMutex(), ex: ex, principal: ex.Action.Principal.ID, holder: holder,
			watchers: map[chan watchMsg]struct{}{}}
		close(le.ready)
		s.live[ex.ID] = le
	}
	pending := s.matchingRevocations(ex)
	s.mu.Unlock()
	for _, rv := range pending {
		if err := s.revokeOne(ctx, le, rv); err != nil {
			// The revocation could not be recorded: the execution must not
			// run without it. Mark it revoked in memory (fail closed).
			le.mu.Lock()
			le.revoked = "revocation " + rv.ID + " (unrecorded: " + err.Error() + ")"
			le.mu.Unlock()
		}
	}
	return le
}

// sweepEvery is how often maybeSweep looks for stale executions, and
// staleAfter how long after its lease expired a started execution is
// dropped.
const (
	sweepEvery = 10 * time.Second
	staleAfter = time.Minute
)

// maybeSweep drops from memory the executions that nobody is watching or
// using and whose lease expired: more than staleAfter ago for a started
// one (its enforcer has killed it, or died, and may still report how it
// ended), at once for one never started (it can no longer start, nor renew:
// admitEvent and handleLease refuse an expired lease before a start). It
// returns them: closeStale records their end. Dropping is always safe: the
// ledger is the record and lookup rebuilds from it. Without the early
// sweep, a caller deciding and never starting kept about 4 KiB per permit
// in memory for a minute past its lease (docs/PERFORMANCE.md).
func (s *Service) maybeSweep() []*liveExec {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSweep) < sweepEvery {
		return nil
	}
	var stale []*liveExec
	s.lastSweep = now
	for id, le := range s.live {
		select {
		case <-le.ready:
		default:
			continue
		}
		select {
		case le.mu <- struct{}{}: // TryLock
		default:
			continue
		}
		if le.err == nil && len(le.watchers) == 0 && !le.lease.IsZero() && (now.Sub(le.lease) > staleAfter || !le.started && !now.Before(le.lease)) {
			delete(s.live, id)
			if le.terminal == "" {
				stale = append(stale, le)
			}
		}
		le.mu.Unlock()
	}
	return stale
}

// closeStale records an interruption (reason "lease_expired", by the
// gateway) for each swept execution that has no terminal event yet, so
// that an execution whose enforcer vanished still ends in the record. An
// enforcer's own later report of the end is then refused as a duplicate.
// It returns what could not be recorded.
//
// The interruptions are recorded appendWorkers at a time, so that the
// sequencer commits them in shared batches: one at a time, each waited a
// whole commit, and a gateway deciding faster than that (1,600 permits a
// second that are never started, in the benchmark harness) swept more
// every sweepEvery than it could close, holding them all in memory.
func (s *Service) closeStale(ctx context.Context, stale []*liveExec) error {
	return inParallel(stale, func(le *liveExec) error { return s.closeOne(ctx, le, "") })
}

// appendWorkers is how many executions the service appends to at once when
// it closes or revokes many (closeStale, closeExpiredPermits, Revoke), so
// that their events share ledger commits.
const appendWorkers = 32

// inParallel runs f on each of items, appendWorkers at a time, and joins
// their errors.
func inParallel[T any](items []T, f func(T) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	next := make(chan T)
	for range min(appendWorkers, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range next {
				if err := f(it); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		next <- it
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// closeOne records the gateway's interruption (lease_expired) of an
// execution that has no terminal event yet, with detail, or one that says
// why when detail is empty.
func (s *Service) closeOne(ctx context.Context, le *liveExec, detail string) error {
	le.mu.Lock()
	defer le.mu.Unlock()
	return s.closeLocked(ctx, le, detail)
}

// closeLocked is closeOne for a caller holding le.mu.
func (s *Service) closeLocked(ctx context.Context, le *liveExec, detail string) error {
	if le.terminal != "" {
		return nil
	}
	if detail == "" {
		detail = fmt.Sprintf("never started; its lease expired at %s", action.FormatTime(le.lease))
		if le.started {
			detail = fmt.Sprintf("no renewal since the lease expired at %s; the enforcer must have killed it or died", action.FormatTime(le.lease))
		}
	}
	if _, err := s.recordAs(ctx, le, lineage.TypeInterrupt, s.g.cfg.Issuer, lineage.InterruptBody{Reason: "lease_expired", Detail: detail}); err != nil {
		return fmt.Errorf("gateway: close execution %s: %w", le.ex.ID, err)
	}
	le.terminal = "interrupted: lease_expired"
	le.notify(watchMsg{Event: "ended", Reason: "lease_expired"})
	return nil
}

// Sweep closes what no enforcer will, until ctx ends: every sweepEvery,
// what maybeSweep finds, whether or not intents arrive (an intent also
// sweeps); and the permits decided before the service started (by a
// previous run, or an embedded one sharing the home) that never started
// and whose grant has expired, so that they can never start: once at
// once, and once more when the grants of the last of them have expired.
// Without it they stayed open in the record, and candidates of every
// revocation, for ever. failed, if not nil, receives what could not be
// recorded.
func (s *Service) Sweep(ctx context.Context, failed func(error)) {
	report := func(err error) {
		if err != nil && failed != nil && ctx.Err() == nil {
			failed(err)
		}
	}
	report(s.closeExpiredPermits(ctx))
	again := time.NewTimer(s.g.cfg.GrantTTL.D() + s.g.cfg.ClockSkew.D() + time.Second)
	defer again.Stop()
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-again.C:
			report(s.closeExpiredPermits(ctx))
		case <-t.C:
			if stale := s.maybeSweep(); len(stale) > 0 {
				report(s.closeStale(ctx, stale))
			}
		}
	}
}

// expiredPermitsQuery finds the permits up to rowid ?1, other than
// delegations (kind ?2), made before ?3 and never started, through
// etb_executions_open (whose condition the query repeats, so that SQLite
// can use it).
const expiredPermitsQuery = `SELECT id FROM etb_executions INDEXED BY etb_executions_open
	WHERE decision IN ('permit', 'require_approval') AND outcome IN ('', 'running')
	AND rowid <= ?1 AND decision = 'permit' AND outcome = '' AND kind != ?2 AND time < ?3`

// closeExpiredPermits closes the permits indexed before the service
// started (rowid up to s.before) that never started and whose grant has
// expired (beyond the clock skew), and drops them from memory.
func (s *Service) closeExpiredPermits(ctx context.Context) error {
	skew := s.g.cfg.ClockSkew.D()
	// A grant expires GrantTTL after its intent's time, or sooner: only
	// intents older than that can have an expired grant.
	cutoff := s.now().Add(-s.g.cfg.GrantTTL.D() - skew)
	rows, err := s.g.db.QueryContext(ctx, expiredPermitsQuery, s.before, KindDelegate, action.FormatTime(cutoff))
	if err != nil {
		return fmt.Errorf("gateway: find expired permits: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("gateway: find expired permits: %w", err)
	}
	return inParallel(ids, func(id string) error {
		le, err := s.lookup(ctx, id)
		if err != nil {
			return err
		}
		le.mu.Lock()
		if le.started || le.ex.Claims == nil || s.now().Before(time.Unix(le.ex.Claims.Expiry, 0).Add(skew)) {
			le.mu.Unlock()
			return nil // started, or still usable
		}
		err = s.closeLocked(ctx, le, fmt.Sprintf("never started; its grant expired at %s", action.FormatTime(time.Unix(le.ex.Claims.Expiry, 0))))
		le.mu.Unlock()
		if err != nil {
			return err
		}
		s.forget(id)
		return nil
	})
}

// forget drops an ended execution from memory.
func (s *Service) forget(id string) {
	s.mu.Lock()
	delete(s.live, id)
	s.mu.Unlock()
}

// errUnknownExecution is returned for an id with no permitted execution.
var errUnknownExecution = errors.New("gateway: no such permitted execution")

// lookup returns the cached execution id, rebuilding it from the ledger if
// it is not in memory. Only one caller rebuilds; the others wait for it.
// lockReportable finds the request's execution, locks it and checks the
// caller may report on it; on failure it has written the error response.
// The caller unlocks le.mu.
func (s *Service) lockReportable(w http.ResponseWriter, r *http.Request, c *caller) (*liveExec, bool) {
	le, err := s.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err)
		return nil, false
	}
	if err := le.mu.LockContext(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", err)
		return nil, false
	}
	if err := mayReport(c, le); err != nil {
		le.mu.Unlock()
		writeError(w, http.StatusForbidden, "forbidden", err)
		return nil, false
	}
	return le, true
}

func (s *Service) lookup(ctx context.Context, id string) (*liveExec, error) {
	if id == "" || len(id) > 128 {
		return nil, fmt.Errorf("%w: bad id %q", errUnknownExecution, id)
	}
	s.mu.Lock()
	le, ok := s.live[id]
	if !ok {
		le = &liveExec{ready: make(chan struct{}), mu: newChanMutex(), watchers: map[chan watchMsg]struct{}{}}
		s.live[id] = le
	}
	s.mu.Unlock()
	if ok {
		select {
		case <-le.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if le.err != nil {
			return nil, le.err
		}
		return le, nil
	}
	le.err = s.rebuild(ctx, le, id)
	close(le.ready)
	if le.err != nil {
		s.mu.Lock()
		if s.live[id] == le {
			delete(s.live, id)
		}
		s.mu.Unlock()
		return nil, le.err
	}
	return le, nil
}

// rebuild restores an execution's state from its ledger chain: the chain is
// verified link by link (Events), then replayed through a new lineage.Chain
// so that the next event links to the last one recorded. Executions that
// were not permitted, or whose grant cannot be read, are refused.
func (s *Service) rebuild(ctx context.Context, le *liveExec, id string) error {
	events, _, err := s.g.Events(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errUnknownExecution, id, err)
	}
	var intent lineage.IntentBody
	if err := events[0].DecodeBody(&intent); err != nil {
		return err
	}
	first := events[0]
	chain := lineage.NewChain(first.Execution, first.Task, first.Parent)
	ex := &Execution{g: s.g, ID: id, Action: intent.Action, Digest: intent.ActionDigest, chain: chain}
	for _, e := range events {
		_, b, err := chain.Next(e.Type, e.Actor, e.Time, e.Body)
		if err != nil {
			return fmt.Errorf("gateway: rebuild %s: event %d: %w", id, e.Seq, err)
		}
		orig, err := e.Canonical()
		if err != nil {
			return err
		}
		if !bytes.Equal(b, orig) {
			return fmt.Errorf("gateway: rebuild %s: event %d does not replay to the bytes in the ledger", id, e.Seq)
		}
		switch e.Type {
		case lineage.TypeDecision:
			if err := e.DecodeBody(&ex.Decision); err != nil {
				return err
			}
		case lineage.TypeGrant:
			var gb lineage.GrantBody
			if err := e.DecodeBody(&gb); err != nil {
				return err
			}
			tok, err := s.g.Token(ctx, gb.JTI)
			if err != nil {
				return err
			}
			c, err := grant.VerifySignature(tok, map[string]ed25519.PublicKey{grant.KeyID(s.g.grantPub): s.g.grantPub})
			if err != nil {
				return fmt.Errorf("gateway: rebuild %s: stored grant: %w", id, err)
			}
			ex.Token, ex.Claims = tok, c
			if c.Cnf != nil {
				le.holder = c.Cnf.X5tS256
			}
		case lineage.TypeStart:
			le.started, ex.started = true, true
		case lineage.TypeRevocation:
			var rb RevocationBody
			if err := e.DecodeBody(&rb); err == nil {
				le.revoked = "revocation " + rb.Revocation
			} else {
				le.revoked = "revoked"
			}
		case lineage.TypeEnd, lineage.TypeInterrupt:
			le.terminal = outcomeOf(e)
		}
	}
	switch {
	case ex.Decision.Decision == policy.Permit && ex.Token != "":
	case ex.Decision.Decision == policy.RequireApproval:
	default:
		return fmt.Errorf("%w: %s was not permitted (decision %q)", errUnknownExecution, id, ex.Decision.Decision)
	}
	if ex.lineage, err = s.g.lineageOf(ctx, ex); err != nil {
		return err
	}
	le.ex, le.principal = ex, intent.Action.Principal.ID
	return nil
}

// recordAs appends one event to le's chain with the given actor. The
// caller holds le.mu.
func (s *Service) recordAs(ctx context.Context, le *liveExec, typ, actor string, body any) (*lineage.Event, error) {
	ex := le.ex
	e, b, err := ex.chain.Next(typ, actor, action.FormatTime(s.now()), body)
	if err != nil {
		return nil, err
	}
	if err := s.g.append(ctx, ex, []*lineage.Event{e}, [][]byte{b}); err != nil {
		// The chain advanced in memory but the event is not durable: the
		// next event would link to a hash the ledger does not have. Drop
		// the cached state; the next request rebuilds it from the ledger.
		s.forget(ex.ID)
		le.terminal = "unknown (ledger write failed)"
		return nil, err
	}
	return e, nil
}

// EventRequest is the body of POST /v1/executions/{id}/events.
type EventRequest struct {
	Type string          `json:"type"`
	Body json.RawMessage `json:"body"`
}

// EventResponse is the answer to an accepted event.
type EventResponse struct {
	Execution string `json:"execution"`
	Type      string `json:"type"`
	Seq       int64  `json:"seq"`
}

// maxHeartbeatBody bounds a heartbeat's body.
const maxHeartbeatBody = 4 << 10

// HeartbeatBody is the body of a heartbeat event an enforcer reports.
type HeartbeatBody struct {
	// Note is free text, at most a few KiB.
	Note string `json:"note"`
}

// decodeEventBody decodes raw strictly as the body type of typ.
func decodeEventBody(typ string, raw json.RawMessage) (any, error) {
	var v any
	switch typ {
	case lineage.TypeStart:
		v = new(lineage.StartBody)
	case lineage.TypeEnd:
		v = new(lineage.EndBody)
	case lineage.TypeInterrupt:
		v = new(lineage.InterruptBody)
	case lineage.TypeEgress:
		v = new(lineage.EgressBody)
	case lineage.TypeHeartbeat:
		v = new(HeartbeatBody)
		if len(raw) > maxHeartbeatBody {
			return nil, fmt.Errorf("heartbeat body is %d bytes, over %d", len(raw), maxHeartbeatBody)
		}
	default:
		return nil, fmt.Errorf("event type %q cannot be reported; want start, end, interrupt, heartbeat or egress", typ)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%s event has no body", typ)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, fmt.Errorf("%s body: %w", typ, err)
	}
	return v, nil
}

// mayReport reports whether c may act on le: its own principal, or an
// enforcer. The caller holds le.mu or le's identity fields are immutable.
func mayReport(c *caller, le *liveExec) error {
	if c.class == identity.ClassEnforcer || c.principal.ID == le.principal {
		return nil
	}
	return fmt.Errorf("execution %s belongs to %s; %s may not report on it", le.ex.ID, le.principal, c.principal.ID)
}

func (s *Service) handleEvent(w http.ResponseWriter, r *http.Request, c *caller) {
	var req EventRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	body, err := decodeEventBody(req.Type, req.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	le, ok := s.lockReportable(w, r, c)
	if !ok {
		return
	}
	defer le.mu.Unlock()
	if status, code, err := s.admitEvent(le, req.Type, body); err != nil {
		writeError(w, status, code, err)
		return
	}
	// The event is recorded even if the client has gone away meanwhile: a
	// reported end or interruption must reach the ledger.
	ctx := context.WithoutCancel(r.Context())
	e, err := s.recordAs(ctx, le, req.Type, c.principal.ID, body)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "ledger", err)
		return
	}
	s.metrics.event(req.Type)
	switch req.Type {
	case lineage.TypeStart:
		le.started = true
	case lineage.TypeEnd, lineage.TypeInterrupt:
		le.terminal = req.Type
		le.notify(watchMsg{Event: "ended", Reason: req.Type})
		s.withdraw(ctx, le)
		s.forget(le.ex.ID)
	}
	writeJSON(w, http.StatusOK, EventResponse{Execution: le.ex.ID, Type: req.Type, Seq: e.Seq})
}

// admitEvent checks that an event of type typ may follow the execution's
// state. The caller holds le.mu.
func (s *Service) admitEvent(le *liveExec, typ string, body any) (int, string, error) {
	id := le.ex.ID
	if le.terminal != "" {
		return http.StatusConflict, "ended", fmt.Errorf("execution %s has ended (%s)", id, le.terminal)
	}
	switch typ {
	case lineage.TypeStart:
		sb := body.(*lineage.StartBody)
		switch {
		case le.ex.Token == "":
			return http.StatusConflict, "no_grant", fmt.Errorf("execution %s has no grant (decision %s, not approved)", id, le.ex.Decision.Decision)
		case le.revoked != "":
			return http.StatusGone, "revoked", fmt.Errorf("execution %s is revoked (%s); it may not start", id, le.revoked)
		case le.started:
			return http.StatusConflict, "conflict", fmt.Errorf("execution %s has already started", id)
		case sb.GrantJTI != le.ex.Claims.ID:
			return http.StatusConflict, "conflict", fmt.Errorf("start names grant %q, execution %s was granted %s", sb.GrantJTI, id, le.ex.Claims.ID)
		case !s.now().Before(le.lease):
			return http.StatusGone, "lease_expired", fmt.Errorf("execution %s: its lease expired at %s", id, action.FormatTime(le.lease))
		}
	case lineage.TypeEnd, lineage.TypeHeartbeat, lineage.TypeEgress:
		if !le.started {
			return http.StatusConflict, "conflict", fmt.Errorf("execution %s has not started; a %s event needs a start", id, typ)
		}
	}
	return 0, "", nil
}
