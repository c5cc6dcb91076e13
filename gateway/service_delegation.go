package gateway

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/identity"
)

// DelegationRequestBody is the body of POST /v1/delegations: the caller
// asks for a delegation grant that lets Agent act within Scope, in a new
// task below the caller's task, for at most TTLSeconds, delegating further
// at most Depth levels. A caller that itself acts under a delegation
// presents it in Delegation; the new grant is then its child and can be no
// wider.
type DelegationRequestBody struct {
	Agent      string      `json:"agent"`
	Scope      grant.Scope `json:"scope"`
	Depth      int         `json:"depth"`
	TTLSeconds int64       `json:"ttl_seconds"`
	Task       struct {
		ID       string `json:"id"`
		ParentID string `json:"parent_id"`
	} `json:"task"`
	Delegation string `json:"delegation,omitempty"`
}

// handleDelegation turns a delegation request into an intent of kind
// agent.delegate and decides it like any other.
func (s *Service) handleDelegation(w http.ResponseWriter, r *http.Request, c *caller) {
	var body DelegationRequestBody
	if err := readJSON(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	if _, err := spiffeid.FromString(body.Agent); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Errorf("agent: %w", err))
		return
	}
	spec, err := DelegationSpec(body.Agent, grant.DelegationRequest{Scope: body.Scope, Depth: body.Depth, TTLSeconds: body.TTLSeconds})
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	req := IntentRequest{Action: spec, Delegation: body.Delegation}
	req.Task.ID, req.Task.ParentID = body.Task.ID, body.Task.ParentID
	s.decideIntent(w, r, c, req)
}

// delegationRevoked returns the id of a revocation covering the delegation
// d (or any delegation above it, its holder, its task's ancestors), or "".
func (s *Service) delegationRevoked(ctx context.Context, d *delegation) (string, error) {
	task := d.claims.Execution
	probe := &Execution{ID: d.claims.Execution, Claims: d.claims,
		Action: action.Action{Time: action.FormatTime(time.Unix(d.claims.IssuedAt, 0)),
			Principal: action.Principal{ID: d.claims.Subject}, Task: action.Task{ID: task, RootID: d.claims.Txn}}}
	refs, err := s.g.lineageOf(ctx, probe)
	if err != nil {
		return "", err
	}
	refs.links = d.chain
	probe.lineage = refs
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rv := range s.revocations {
		if rv.matches(probe) {
			return rv.ID, nil
		}
	}
	return "", nil
}

// handleTaskEvidence serves the evidence bundle of a whole task tree. An
// agent may fetch it only for a tree it acts in.
func (s *Service) handleTaskEvidence(w http.ResponseWriter, r *http.Request, c *caller) {
	id, _, ok := s.taskFor(w, r, c)
	if !ok {
		return
	}
	b, err := s.g.EvidenceForTask(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "evidence", err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// handleTaskTree serves a task tree (what `etb log tree` prints).
func (s *Service) handleTaskTree(w http.ResponseWriter, r *http.Request, c *caller) {
	id, _, ok := s.taskFor(w, r, c)
	if !ok {
		return
	}
	t, err := s.g.TaskTree(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// taskFor resolves the task of the request path and checks that the
// caller may see it.
func (s *Service) taskFor(w http.ResponseWriter, r *http.Request, c *caller) (id, root string, ok bool) {
	p := r.PathValue("id")
	if len(p) > 128 {
		writeError(w, http.StatusNotFound, "not_found", fmt.Errorf("no task %.128q", p))
		return "", "", false
	}
	id, root, err := s.g.ResolveTask(r.Context(), p)
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err)
		return "", "", false
	}
	if c.class == identity.ClassAgent {
		var n int
		err := s.g.db.QueryRowContext(r.Context(), agentInTree, root, c.principal.ID).Scan(&n)
		if err != nil || n == 0 {
			writeError(w, http.StatusForbidden, "forbidden", fmt.Errorf("%s acts in no task of tree %s", c.principal.ID, root))
			return "", "", false
		}
	}
	return id, root, true
}
