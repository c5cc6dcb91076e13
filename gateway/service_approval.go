package gateway

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Human approval.
//
// A require_approval decision opens a ticket bound to the execution, and so
// to its action digest: approving it grants exactly that action to exactly
// that caller (and holder certificate), once. An intent with changed
// arguments is another execution with its own ticket. A ticket is decided
// once (approved, rejected) or expires; each outcome is in the execution's
// ledger chain: an approval event naming the approver for a decision, then
// the grant (approved) or an interrupt (rejected, expired).

// DefaultApprovalTTL is how long a ticket waits for a human when
// ServiceOptions.ApprovalTTL is 0.
const DefaultApprovalTTL = 10 * time.Minute

// maxWait bounds how long one request may wait for an approval.
const maxWait = 5 * time.Minute

// Ticket statuses.
const (
	TicketPending  = "pending"
	TicketApproved = "approved"
	TicketRejected = "rejected"
	TicketExpired  = "expired"
	// TicketWithdrawn: the requester ended the execution (an interrupt or
	// end reported) while the ticket was pending.
	TicketWithdrawn = "withdrawn"
)

const approvalSchema = `
CREATE TABLE IF NOT EXISTS etb_approvals(
	id TEXT PRIMARY KEY, execution TEXT NOT NULL, digest TEXT NOT NULL, principal TEXT NOT NULL,
	holder TEXT NOT NULL, expires_ns INTEGER NOT NULL, status TEXT NOT NULL, approver TEXT NOT NULL DEFAULT '');
`

// ApprovalBody is the body of an approval event.
type ApprovalBody = lineage.ApprovalBody

// Approval is a ticket as the API shows it.
type Approval struct {
	ID        string `json:"id"`
	Execution string `json:"execution"`
	Status    string `json:"status"`
	Expires   string `json:"expires"`
	Digest    string `json:"action_digest"`
	Principal string `json:"principal"`
	Approver  string `json:"approver,omitempty"`
	// Action is what is to be approved (in listings and to approvers).
	Action *action.Spec `json:"action,omitempty"`
	// Grant and Lease are given to the execution's own principal once the
	// ticket is approved.
	Grant string `json:"grant,omitempty"`
	Lease *Lease `json:"lease,omitempty"`
}

// ticket is an open approval ticket in memory.
type ticket struct {
	id, execution, digest, principal, holder string
	expires                                  time.Time
	// decideMu serializes deciding the ticket (approve, reject, expire);
	// mu guards status and approver.
	decideMu         sync.Mutex
	mu               sync.Mutex
	status, approver string
	done             chan struct{} // closed when status leaves pending
	timer            *time.Timer   // guarded by Service.mu
}

// state returns the ticket's status and approver.
func (t *ticket) state() (status, approver string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status, t.approver
}

func (s *Service) createApprovalTable(ctx context.Context) error {
	if _, err := s.g.db.ExecContext(ctx, approvalSchema); err != nil {
		return fmt.Errorf("gateway: create approval table: %w", err)
	}
	return nil
}

// openTicket opens the approval ticket of a require_approval execution.
func (s *Service) openTicket(ctx context.Context, ex *Execution, holder string) (*ticket, error) {
	t := &ticket{id: action.NewID(s.now()), execution: ex.ID, digest: ex.Digest, principal: ex.Action.Principal.ID, holder: holder,
		expires: s.now().Add(s.opt.ApprovalTTL), status: TicketPending, done: make(chan struct{})}
	if _, err := s.g.db.ExecContext(ctx, `INSERT INTO etb_approvals(id, execution, digest, principal, holder, expires_ns, status) VALUES(?,?,?,?,?,?,?)`,
		t.id, t.execution, t.digest, t.principal, t.holder, t.expires.UnixNano(), t.status); err != nil {
		return nil, fmt.Errorf("gateway: store approval ticket for %s: %w", ex.ID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.tickets[t.id]; ok {
		// A reader (a listing) loaded the new row before we got here: keep
		// the one object everybody waits on.
		return old, nil
	}
	s.tickets[t.id] = t
	t.timer = time.AfterFunc(time.Until(t.expires), func() { s.expire(context.Background(), t) })
	return t, nil
}

// ticketByID returns an open ticket from memory, or loads it from the
// database (after a restart).
func (s *Service) ticketByID(ctx context.Context, id string) (*ticket, error) {
	s.mu.Lock()
	t, ok := s.tickets[id]
	s.mu.Unlock()
	if ok {
		return t, nil
	}
	t = &ticket{id: id, done: make(chan struct{})}
	var ns int64
	err := s.g.db.QueryRowContext(ctx, `SELECT execution, digest, principal, holder, expires_ns, status, approver FROM etb_approvals WHERE id = ?`, id).
		Scan(&t.execution, &t.digest, &t.principal, &t.holder, &ns, &t.status, &t.approver)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("gateway: no approval ticket %q", id)
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: approval ticket %s: %w", id, err)
	}
	t.expires = time.Unix(0, ns)
	if t.status != TicketPending {
		close(t.done)
	}
	s.mu.Lock()
	if old, ok := s.tickets[id]; ok {
		t = old
	} else {
		s.tickets[id] = t
		if t.status == TicketPending {
			t.timer = time.AfterFunc(time.Until(t.expires), func() { s.expire(context.Background(), t) })
		}
	}
	s.mu.Unlock()
	return t, nil
}

// setStatus moves a pending ticket to status, durably. The caller holds
// the execution's le.mu.
func (s *Service) setStatus(ctx context.Context, t *ticket, status, approver string) error {
	if _, err := s.g.db.ExecContext(ctx, `UPDATE etb_approvals SET status = ?, approver = ? WHERE id = ? AND status = ?`,
		status, approver, t.id, TicketPending); err != nil {
		return fmt.Errorf("gateway: approval ticket %s: %w", t.id, err)
	}
	t.mu.Lock()
	t.status, t.approver = status, approver
	t.mu.Unlock()
	s.metrics.approval(status)
	s.mu.Lock()
	if t.timer != nil {
		t.timer.Stop()
	}
	delete(s.tickets, t.id) // decided: the database has it from now on
	s.mu.Unlock()
	close(t.done)
	return nil
}

// withdraw closes the pending tickets of an execution that ended without
// them (the enforcer reported an interrupt or an end). The caller holds
// le.mu, which every decision of a ticket also takes before it looks at
// the ticket's state.
func (s *Service) withdraw(ctx context.Context, le *liveExec) {
	s.mu.Lock()
	var open []*ticket
	for _, t := range s.tickets {
		if t.execution == le.ex.ID {
			open = append(open, t)
		}
	}
	s.mu.Unlock()
	for _, t := range open {
		if st, _ := t.state(); st == TicketPending {
			s.setStatus(ctx, t, TicketWithdrawn, "")
		}
	}
}

// expire closes a ticket nobody decided in time, recording the
// interruption.
func (s *Service) expire(ctx context.Context, t *ticket) {
	le, err := s.lookup(ctx, t.execution)
	if err != nil {
		return
	}
	t.decideMu.Lock()
	defer t.decideMu.Unlock()
	le.mu.Lock()
	defer le.mu.Unlock()
	if st, _ := t.state(); st != TicketPending {
		return
	}
	if err := s.setStatus(ctx, t, TicketExpired, ""); err != nil {
		return
	}
	if le.terminal == "" {
		if _, err := s.recordAs(ctx, le, lineage.TypeInterrupt, s.g.cfg.Issuer, lineage.InterruptBody{Reason: "approval_expired",
			Detail: fmt.Sprintf("approval ticket %s expired at %s undecided", t.id, action.FormatTime(t.expires))}); err == nil {
			le.terminal = "interrupted: approval_expired"
			s.forget(le.ex.ID)
		}
	}
}

// decide approves or rejects a pending ticket on behalf of approver. For an
// approval it records the approval event, issues the grant (bound to the
// requester's certificate) and records it; for a rejection the approval
// event and an interrupt.
func (s *Service) decide(ctx context.Context, t *ticket, approve bool, approver, comment string) (int, string, error) {
	le, err := s.lookup(ctx, t.execution)
	if err != nil {
		return http.StatusNotFound, "not_found", err
	}
	t.decideMu.Lock()
	defer t.decideMu.Unlock()
	le.mu.Lock()
	defer le.mu.Unlock()
	st, _ := t.state()
	switch {
	case st != TicketPending:
		return http.StatusConflict, "decided", fmt.Errorf("approval ticket %s is already %s", t.id, st)
	case !s.now().Before(t.expires):
		return http.StatusGone, "expired", fmt.Errorf("approval ticket %s expired at %s", t.id, action.FormatTime(t.expires))
	case le.terminal != "" || le.revoked != "":
		return http.StatusConflict, "ended", fmt.Errorf("execution %s has ended or was revoked", t.execution)
	case le.ex.Digest != t.digest:
		return http.StatusConflict, "conflict", fmt.Errorf("ticket %s is bound to digest %s, the execution has %s", t.id, t.digest, le.ex.Digest)
	}
	verdict := TicketRejected
	if approve {
		verdict = TicketApproved
	}
	if _, err := s.recordAs(ctx, le, lineage.TypeApproval, approver, ApprovalBody{Ticket: t.id, Decision: verdict,
		Approver: approver, ActionDigest: t.digest, Comment: comment}); err != nil {
		return http.StatusInternalServerError, "ledger", err
	}
	if err := s.setStatus(ctx, t, verdict, approver); err != nil {
		return http.StatusInternalServerError, "internal", err
	}
	if !approve {
		if _, err := s.recordAs(ctx, le, lineage.TypeInterrupt, s.g.cfg.Issuer, lineage.InterruptBody{Reason: "approval_rejected",
			Detail: fmt.Sprintf("rejected by %s", approver)}); err != nil {
			return http.StatusInternalServerError, "ledger", err
		}
		le.terminal = "interrupted: approval_rejected"
		s.forget(le.ex.ID)
		return http.StatusOK, "", nil
	}
	if err := s.grantApproved(ctx, le, t.holder); err != nil {
		return http.StatusInternalServerError, "not_authorized", err
	}
	return http.StatusOK, "", nil
}

// grantApproved issues and records the grant of an approved execution,
// exactly as Begin does for a permit. The caller holds le.mu.
func (s *Service) grantApproved(ctx context.Context, le *liveExec, holder string) error {
	ex := le.ex
	fail := func(err error) error {
		err = fmt.Errorf("gateway: issue grant for approved %s: %w", ex.ID, err)
		if _, rerr := s.recordAs(ctx, le, lineage.TypeInterrupt, s.g.cfg.Issuer, lineage.InterruptBody{Reason: "grant_failed", Detail: err.Error()}); rerr == nil {
			le.terminal = "interrupted: grant_failed"
		}
		return err
	}
	// A sub-agent's approved action gets a child of its delegation, as a
	// permit would.
	parent, err := s.g.parentDelegation(ctx, ex)
	if err != nil {
		return fail(err)
	}
	opt := beginOptions{holder: holder, delegation: parent}
	c, err := s.g.grantClaims(&ex.Action, ex.Digest, ex.Decision, opt)
	if err != nil {
		return fail(err)
	}
	token, claims, err := s.g.issueChecked(c, parent)
	if err != nil {
		return fail(err)
	}
	// What an approved action spends counts against its limits as a
	// permit's would (under the current policy's limits).
	slots, err := s.g.Policy().LimitSlots(ctx, &ex.Action)
	if err != nil {
		return fail(err)
	}
	ex.approvedUse = slots
	ex.Token, ex.Claims = token, &claims
	if _, err := s.recordAs(ctx, le, lineage.TypeGrant, s.g.cfg.Issuer, lineage.GrantBody{JTI: claims.ID, TokenSHA256: grant.TokenHash(token),
		ADG: claims.ADG, Pol: claims.Pol, Aud: claims.Audience, Exp: claims.Expiry}); err != nil {
		ex.Token, ex.Claims = "", nil
		return err
	}
	le.lease = s.now().Add(s.opt.LeaseTTL)
	if gexp := time.Unix(claims.Expiry, 0); gexp.Before(le.lease) {
		le.lease = gexp
	}
	return nil
}

// view renders a ticket for a caller; the grant only for its requester.
// The caller holds le.mu (when le is not nil).
func (s *Service) view(t *ticket, le *liveExec, c *caller) Approval {
	st, approver := t.state()
	a := Approval{ID: t.id, Execution: t.execution, Status: st, Expires: action.FormatTime(t.expires),
		Digest: t.digest, Principal: t.principal, Approver: approver}
	if le != nil && le.ex != nil {
		spec := le.ex.Action.Action
		a.Action = &spec
		if st == TicketApproved && c.principal.ID == t.principal && le.ex.Token != "" && !le.started && le.terminal == "" {
			a.Grant = le.ex.Token
			a.Lease = &Lease{Expires: action.FormatTime(le.lease), TTLMS: max(0, le.lease.Sub(s.now()).Milliseconds())}
		}
	}
	return a
}

// wait blocks until t is decided, d passes or ctx ends.
func wait(ctx context.Context, t *ticket, d time.Duration) {
	if d <= 0 {
		return
	}
	tm := time.NewTimer(min(d, maxWait))
	defer tm.Stop()
	select {
	case <-t.done:
	case <-tm.C:
	case <-ctx.Done():
	}
}

// waitParam reads ?wait_ms=N.
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait_ms")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("wait_ms %q is not a non-negative integer", v)
	}
	return time.Duration(n) * time.Millisecond, nil
}

func (s *Service) handleApprovalGet(w http.ResponseWriter, r *http.Request, c *caller) {
	t, err := s.ticketByID(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err)
		return
	}
	if c.class != identity.ClassApprover && c.class != identity.ClassAdmin && c.principal.ID != t.principal {
		writeError(w, http.StatusForbidden, "forbidden", fmt.Errorf("approval ticket %s belongs to %s", t.id, t.principal))
		return
	}
	d, err := waitParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	wait(r.Context(), t, d)
	writeJSON(w, http.StatusOK, s.approvalView(r.Context(), t, c))
}

// approvalView renders t with its execution's state.
func (s *Service) approvalView(ctx context.Context, t *ticket, c *caller) Approval {
	le, err := s.lookup(ctx, t.execution)
	if err != nil {
		return s.view(t, nil, c)
	}
	le.mu.Lock()
	defer le.mu.Unlock()
	return s.view(t, le, c)
}

// DecideRequest is the optional body of approve and reject.
type DecideRequest struct {
	Comment string `json:"comment,omitempty"`
}

func (s *Service) handleApprove(w http.ResponseWriter, r *http.Request, c *caller) {
	s.handleDecide(w, r, c, true)
}

func (s *Service) handleReject(w http.ResponseWriter, r *http.Request, c *caller) {
	s.handleDecide(w, r, c, false)
}

func (s *Service) handleDecide(w http.ResponseWriter, r *http.Request, c *caller, approve bool) {
	var req DecideRequest
	if r.ContentLength != 0 {
		if err := readJSON(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", err)
			return
		}
	}
	if len(req.Comment) > 1024 {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Errorf("comment is %d bytes, over 1024", len(req.Comment)))
		return
	}
	t, err := s.ticketByID(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err)
		return
	}
	if t.principal == c.principal.ID {
		writeError(w, http.StatusForbidden, "forbidden", fmt.Errorf("%s may not decide its own request", c.principal.ID))
		return
	}
	status, code, err := s.decide(context.WithoutCancel(r.Context()), t, approve, c.principal.ID, req.Comment)
	if err != nil {
		writeError(w, status, code, err)
		return
	}
	writeJSON(w, http.StatusOK, s.approvalView(r.Context(), t, c))
}

func (s *Service) handleApprovalList(w http.ResponseWriter, r *http.Request, c *caller) {
	rows, err := s.g.db.QueryContext(r.Context(), `SELECT id FROM etb_approvals WHERE status = ? AND expires_ns > ? ORDER BY expires_ns LIMIT 1000`,
		TicketPending, s.now().UnixNano())
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err)
		return
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			writeError(w, http.StatusInternalServerError, "internal", err)
			return
		}
		ids = append(ids, id)
	}
	rows.Close()
	out := []Approval{}
	for _, id := range ids {
		t, err := s.ticketByID(r.Context(), id)
		if err != nil {
			continue
		}
		out = append(out, s.approvalView(r.Context(), t, c))
	}
	writeJSON(w, http.StatusOK, map[string][]Approval{"approvals": out})
}

// isApprovalPending reports whether d asks for approval.
func isApprovalPending(d policy.Decision) bool { return d.Decision == policy.RequireApproval }
