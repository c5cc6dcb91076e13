package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Leases, revocation and the watch stream.
//
// A lease is the time an execution may keep running without hearing from
// the gateway. The enforcer renews it; a renewal re-checks revocation and
// re-evaluates the current policy on the recorded action, and is refused
// (410 revoked, 409 policy_denied or ended) when either no longer allows
// the execution. An enforcer that cannot renew kills the execution when
// its lease expires.
//
// A revocation is pushed: every execution it covers gets a revocation
// event in its ledger chain, and every watch stream open on it (GET
// /v1/executions/{id}/watch) receives a "revoked" message before POST
// /v1/revoke returns.

const revocationSchema = `
CREATE TABLE IF NOT EXISTS etb_revocations(
	id TEXT PRIMARY KEY, time TEXT NOT NULL, unix_nano INTEGER NOT NULL,
	actor TEXT NOT NULL, scope TEXT NOT NULL, value TEXT NOT NULL);
`

// recentRevocationWindow is how long a revocation request is remembered
// in memory, to catch executions whose Begin was in flight when it was
// made, and to refuse sub-agents acting under a revoked delegation. It is
// longer than any Begin and than any grant's lifetime.
const recentRevocationWindow = grant.MaxLifetime + time.Minute

// Revocation scopes.
const (
	ScopeExecution = "execution"
	ScopeTask      = "task"
	ScopeAgent     = "agent"
	ScopeAll       = "all"
	ScopeGrant     = "grant"
)

// RevokeRequest is the body of POST /v1/revoke: exactly one of its fields.
type RevokeRequest struct {
	Execution string `json:"execution,omitempty"`
	// Grant is a grant id (jti): the grant and every grant delegated from
	// it.
	Grant string `json:"grant,omitempty"`
	Task  string `json:"task,omitempty"`
	Agent string `json:"agent,omitempty"`
	All   bool   `json:"all,omitempty"`
}

// RevokeResponse is the answer to POST /v1/revoke, sent once every
// covered execution's revocation is durable and pushed.
type RevokeResponse struct {
	Revocation string   `json:"revocation"`
	Revoked    []string `json:"revoked"`
}

// RevocationBody is the body of a revocation event.
type RevocationBody = lineage.RevocationBody

// revocation is one revocation request.
type revocation struct {
	ID, Actor, Scope, Value string
	Time                    time.Time
}

// matches reports whether rv covers the execution ex, begun before it.
// A revocation reaches every descendant: an execution in a task below the
// revoked task, or whose grant descends from a delegation by the revoked
// agent, from the revoked grant, or from the revoked (delegation)
// execution.
func (rv revocation) matches(ex *Execution) bool {
	t, err := time.Parse(time.RFC3339Nano, ex.Action.Time)
	if err == nil && t.After(rv.Time) {
		return false
	}
	links := ex.lineage.links
	switch rv.Scope {
	case ScopeAll:
		return true
	case ScopeExecution:
		if ex.ID == rv.Value {
			return true
		}
		for _, l := range links {
			if l.Execution == rv.Value {
				return true
			}
		}
	case ScopeTask:
		if ex.Action.Task.ID == rv.Value || ex.Action.Task.RootID == rv.Value || contains(ex.lineage.tasks, rv.Value) {
			return true
		}
	case ScopeAgent:
		if ex.Action.Principal.ID == rv.Value {
			return true
		}
		for _, l := range links {
			if l.Delegator == rv.Value {
				return true
			}
		}
	case ScopeGrant:
		if ex.Claims != nil && ex.Claims.ID == rv.Value {
			return true
		}
		for _, l := range links {
			if l.JTI == rv.Value {
				return true
			}
		}
	}
	return false
}

func (s *Service) createRevocationTable(ctx context.Context) error {
	if _, err := s.g.db.ExecContext(ctx, revocationSchema); err != nil {
		return fmt.Errorf("gateway: create revocation table: %w", err)
	}
	return nil
}

func (s *Service) loadRecentRevocations(ctx context.Context) error {
	since := s.now().Add(-recentRevocationWindow).UnixNano()
	rows, err := s.g.db.QueryContext(ctx, `SELECT id, actor, scope, value, unix_nano FROM etb_revocations WHERE unix_nano >= ? ORDER BY unix_nano`, since)
	if err != nil {
		return fmt.Errorf("gateway: load revocations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var rv revocation
		var ns int64
		if err := rows.Scan(&rv.ID, &rv.Actor, &rv.Scope, &rv.Value, &ns); err != nil {
			return err
		}
		rv.Time = time.Unix(0, ns)
		s.revocations = append(s.revocations, rv)
	}
	return rows.Err()
}

// matchingRevocations returns the recent revocations covering ex. The
// caller holds s.mu.
func (s *Service) matchingRevocations(ex *Execution) []revocation {
	var out []revocation
	for _, rv := range s.revocations {
		if rv.matches(ex) {
			out = append(out, rv)
		}
	}
	return out
}

func (r RevokeRequest) scope() (scope, value string, err error) {
	n := 0
	for _, set := range []bool{r.Execution != "", r.Grant != "", r.Task != "", r.Agent != "", r.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		return "", "", fmt.Errorf("name exactly one of execution, grant, task, agent or all; got %d", n)
	}
	switch {
	case r.Execution != "":
		return ScopeExecution, r.Execution, nil
	case r.Grant != "":
		return ScopeGrant, r.Grant, nil
	case r.Task != "":
		return ScopeTask, r.Task, nil
	case r.Agent != "":
		return ScopeAgent, r.Agent, nil
	}
	return ScopeAll, "", nil
}

func (s *Service) handleRevoke(w http.ResponseWriter, r *http.Request, c *caller) {
	var req RevokeRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	scope, value, err := req.scope()
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	// Once the request is read, finish it even if the admin goes away.
	ctx := context.WithoutCancel(r.Context())
	resp, err := s.Revoke(ctx, c.principal.ID, scope, value)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "revocation_failed", err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// revocationCandidatesQuery finds the open executions (through
// etb_executions_open, without scanning the others), leaving out the
// delegations (kind ?1) made before ?2, whose grants have expired.
const revocationCandidatesQuery = `SELECT id FROM etb_executions INDEXED BY etb_executions_open
	WHERE decision IN ('permit', 'require_approval') AND outcome IN ('', 'running')
	AND NOT (kind = ?1 AND time < ?2)`

// Revoke revokes every open permitted execution in scope (ScopeExecution,
// ScopeTask, ScopeAgent with a value; ScopeAll without), on behalf of
// actor. The request is stored first; then each covered execution is
// marked revoked, its watchers are told, and a revocation event is
// appended to its chain. An error means some revocation events could not
// be recorded; the executions are still marked revoked in memory, so no
// lease of theirs is renewed.
func (s *Service) Revoke(ctx context.Context, actor, scope, value string) (*RevokeResponse, error) {
	rv := revocation{ID: action.NewID(s.now()), Actor: actor, Scope: scope, Value: value, Time: s.now()}
	if _, err := s.g.db.ExecContext(ctx, `INSERT INTO etb_revocations(id, time, unix_nano, actor, scope, value) VALUES(?,?,?,?,?,?)`,
		rv.ID, action.FormatTime(rv.Time), rv.Time.UnixNano(), actor, scope, value); err != nil {
		return nil, fmt.Errorf("gateway: store revocation: %w", err)
	}
	ids := map[string]bool{}
	s.mu.Lock()
	keep := s.revocations[:0]
	for _, old := range s.revocations {
		if rv.Time.Sub(old.Time) < recentRevocationWindow {
			keep = append(keep, old)
		}
	}
	s.revocations = append(keep, rv)
	for id, le := range s.live {
		select {
		case <-le.ready:
			if le.err == nil && le.ex != nil && rv.matches(le.ex) {
				ids[id] = true
			}
		default:
			ids[id] = true // being loaded: decide once loaded
		}
	}
	s.mu.Unlock()

	// Every open execution is a candidate: a revocation reaches the
	// descendants of what it names (tasks below, grants delegated), which
	// matches decides from each execution's lineage. Delegations whose
	// grants have expired can have no live descendants.
	rows, err := s.g.db.QueryContext(ctx, revocationCandidatesQuery, KindDelegate, action.FormatTime(rv.Time.Add(-grant.MaxLifetime-time.Minute)))
	if err != nil {
		return nil, fmt.Errorf("gateway: find executions to revoke: %w", err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	var (
		mu      sync.Mutex
		revoked = []string{}
		errs    []string
	)
	inParallel(slices.Collect(maps.Keys(ids)), func(id string) error {
		le, err := s.lookup(ctx, id)
		if err != nil {
			return nil // not a permitted execution, or gone
		}
		if !rv.matches(le.ex) {
			return nil
		}
		err = s.revokeOne(ctx, le, rv)
		if le.ex.Action.Action.Kind == KindDelegate {
			// A delegation has no lease to sweep it: its revocation is
			// recorded, the revocation list refuses its sub-agents.
			s.forget(id)
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == errNothingToRevoke:
		case err != nil:
			revoked = append(revoked, id)
			errs = append(errs, err.Error())
		default:
			revoked = append(revoked, id)
		}
		return nil
	})
	s.metrics.revocation(len(revoked))
	resp := &RevokeResponse{Revocation: rv.ID, Revoked: revoked}
	if len(errs) > 0 {
		return resp, fmt.Errorf("gateway: revocation %s: %d events not recorded: %s", rv.ID, len(errs), strings.Join(errs, "; "))
	}
	return resp, nil
}

var errNothingToRevoke = fmt.Errorf("gateway: execution already ended or revoked")

// revokeOne marks le revoked, pushes the revocation to its watchers and
// records it in its chain.
func (s *Service) revokeOne(ctx context.Context, le *liveExec, rv revocation) error {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.terminal != "" || le.revoked != "" {
		return errNothingToRevoke
	}
	le.revoked = "revocation " + rv.ID
	// Push before recording: the kill must not wait for the disk. The
	// enforcer's interruption report waits for le.mu, so the revocation
	// event precedes it in the chain.
	le.notify(watchMsg{Event: "revoked", Reason: "revoked", Revocation: rv.ID})
	_, err := s.recordAs(ctx, le, lineage.TypeRevocation, rv.Actor, RevocationBody{Revocation: rv.ID, Scope: rv.Scope, Value: rv.Value})
	return err
}

// watchMsg is one message of a watch stream.
type watchMsg struct {
	// Event is "open", "revoked" or "ended".
	Event      string `json:"event"`
	Reason     string `json:"reason,omitempty"`
	Revocation string `json:"revocation,omitempty"`
}

// notify sends m to every watcher without blocking. The caller holds le.mu.
func (le *liveExec) notify(m watchMsg) {
	for ch := range le.watchers {
		select {
		case ch <- m:
		default:
			// A watcher that is this far behind has missed a revocation:
			// closing its stream makes its enforcer fall back to renewal,
			// which refuses.
			close(ch)
			delete(le.watchers, ch)
		}
	}
}

// watchKeepalive is how often an idle watch stream carries a comment line.
const watchKeepalive = 5 * time.Second

func (s *Service) handleWatch(w http.ResponseWriter, r *http.Request, c *caller) {
	le, err := s.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "internal", fmt.Errorf("the response writer cannot stream"))
		return
	}
	ch := make(chan watchMsg, 8)
	if err := le.mu.LockContext(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", err)
		return
	}
	if err := mayReport(c, le); err != nil {
		le.mu.Unlock()
		writeError(w, http.StatusForbidden, "forbidden", err)
		return
	}
	first := watchMsg{Event: "open"}
	switch {
	case le.revoked != "":
		first = watchMsg{Event: "revoked", Reason: le.revoked}
	case le.terminal != "":
		first = watchMsg{Event: "ended", Reason: le.terminal}
	default:
		le.watchers[ch] = struct{}{}
	}
	le.mu.Unlock()
	defer func() {
		le.mu.Lock()
		delete(le.watchers, ch)
		le.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	send := func(m watchMsg) bool {
		b, _ := json.Marshal(m)
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", m.Event, b); err != nil {
			return false
		}
		fl.Flush()
		return m.Event == "open"
	}
	if !send(first) {
		return
	}
	tick := time.NewTicker(watchKeepalive)
	defer tick.Stop()
	for {
		select {
		case m, ok := <-ch:
			if !ok || !send(m) {
				return
			}
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// LeaseResponse is the answer to POST /v1/executions/{id}/lease.
type LeaseResponse struct {
	Execution string `json:"execution"`
	Lease     Lease  `json:"lease"`
}

// PolicyDenied is the body of a 409 policy_denied answer to a renewal.
type PolicyDenied struct {
	APIError
	Decision policy.Decision `json:"decision"`
}

func (s *Service) handleLease(w http.ResponseWriter, r *http.Request, c *caller) {
	le, ok := s.lockReportable(w, r, c)
	if !ok {
		return
	}
	defer le.mu.Unlock()
	id := le.ex.ID
	switch {
	case le.terminal != "":
		writeError(w, http.StatusConflict, "ended", fmt.Errorf("execution %s has ended (%s)", id, le.terminal))
		return
	case le.revoked != "":
		writeError(w, http.StatusGone, "revoked", fmt.Errorf("execution %s is revoked (%s)", id, le.revoked))
		return
	case le.ex.Token == "":
		writeError(w, http.StatusConflict, "no_grant", fmt.Errorf("execution %s has no grant to lease", id))
		return
	case !le.started && !s.now().Before(le.lease):
		// Its start would be refused (admitEvent), so a renewal may not
		// revive it; the sweep closes it.
		writeError(w, http.StatusGone, "lease_expired", fmt.Errorf("execution %s never started and its lease expired at %s", id, action.FormatTime(le.lease)))
		return
	}
	d := s.g.Policy().Evaluate(r.Context(), &le.ex.Action)
	// An approved execution stays allowed while the policy still asks for
	// approval: the approval given answers it.
	if d.Decision != policy.Permit && !(d.Decision == policy.RequireApproval && le.ex.Decision.Decision == policy.RequireApproval) {
		le.revoked = fmt.Sprintf("policy %s now decides %s by %v", d.Policy.BundleHash, d.Decision, d.Rules)
		le.notify(watchMsg{Event: "revoked", Reason: "policy_denied"})
		writeJSON(w, http.StatusConflict, PolicyDenied{APIError: APIError{Code: "policy_denied",
			Error: fmt.Sprintf("execution %s: the current policy decides %s by %v", id, d.Decision, d.Rules)}, Decision: d})
		return
	}
	now := s.now()
	le.lease = now.Add(s.opt.LeaseTTL)
	writeJSON(w, http.StatusOK, LeaseResponse{Execution: id, Lease: Lease{Expires: action.FormatTime(le.lease), TTLMS: s.opt.LeaseTTL.Milliseconds()}})
}

// RevocationCount returns how many revocation requests the home has
// stored.
func (s *Service) RevocationCount(ctx context.Context) (int, error) {
	var n int
	if err := s.g.db.QueryRowContext(ctx, `SELECT count(*) FROM etb_revocations`).Scan(&n); err != nil {
		return 0, fmt.Errorf("gateway: count revocations: %w", err)
	}
	return n, nil
}
