package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/telemetry"
)

// DefaultLeaseTTL is how long a lease lasts when ServiceOptions.LeaseTTL
// is 0. An enforcer renews at a third of it.
const DefaultLeaseTTL = 10 * time.Second

// maxRequestBytes bounds every request body the Service reads.
const maxRequestBytes = 256 << 10

// ServiceOptions configure NewService.
type ServiceOptions struct {
	// Bundle is the trust bundle that mTLS callers' X.509-SVIDs chain to.
	// The Service verifies every TLS caller's certificate against it
	// itself, whatever the server's TLS configuration did; with no bundle,
	// every TLS caller is refused.
	Bundle x509bundle.Source
	// Classes map SPIFFE ID paths to caller classes; the zero value means
	// identity.DefaultClasses().
	Classes identity.Classes
	// LeaseTTL is the lifetime of a lease (DefaultLeaseTTL if 0).
	LeaseTTL time.Duration
	// ApprovalTTL is how long an approval ticket waits for a human
	// (DefaultApprovalTTL if 0).
	ApprovalTTL time.Duration
	// Host is recorded in every action's env as "host".
	Host string
}

// Service is the gateway's HTTP/JSON API (docs/api/openapi.yaml): the
// governed-execution pipeline of a Gateway behind an authenticated
// transport, with leases, revocation pushed to running enforcers and the
// evidence of each execution.
//
// A caller's identity comes only from the connection: the verified
// X.509-SVID of an mTLS peer, or the principal a unix-socket listener
// attested with identity.ConnContext. Nothing in a request body names
// the caller. A request whose caller cannot be established, or whose
// class may not use the route, is refused before anything else is read.
//
// Open executions are cached in memory; the ledger is the record, and an
// execution missing from memory (after a restart) is rebuilt from its
// ledger chain, which is checked link by link before it is used. An
// execution left unrenewed for a minute past its lease is closed by the
// gateway with an interrupt (reason lease_expired), so that one whose
// enforcer vanished still ends in the record; a permit never started is
// closed so once its lease has expired (it can no longer start). Sweep
// runs that every 10 s, and closes a previous run's unstarted permits once
// their grants have expired; `etb serve` runs it.
type Service struct {
	g       *Gateway
	opt     ServiceOptions
	classes identity.Classes
	mux     *http.ServeMux
	now     func() time.Time

	certs sync.Map // sha256 of a leaf's DER → verifiedCert

	mu          sync.Mutex
	live        map[string]*liveExec
	revocations []revocation // recent revocation requests, newest last
	tickets     map[string]*ticket
	lastSweep   time.Time
	// before is the rowid of the last execution indexed when the service
	// started: the permits up to it that never started are a previous
	// run's (see Sweep).
	before int64

	metrics metrics
}

type verifiedCert struct {
	id        spiffeid.ID
	principal action.Principal
	holder    string // Thumbprint of the leaf
	notAfter  time.Time
}

// NewService returns the API of g. It creates the revocation table in the
// home database if needed.
func NewService(ctx context.Context, g *Gateway, opt ServiceOptions) (*Service, error) {
	if opt.LeaseTTL == 0 {
		opt.LeaseTTL = DefaultLeaseTTL
	}
	if opt.LeaseTTL < 100*time.Millisecond || opt.LeaseTTL > time.Hour {
		return nil, fmt.Errorf("gateway: lease ttl %v is not in [100ms, 1h]", opt.LeaseTTL)
	}
	if opt.ApprovalTTL == 0 {
		opt.ApprovalTTL = DefaultApprovalTTL
	}
	if opt.ApprovalTTL < 0 || opt.ApprovalTTL > 24*time.Hour {
		return nil, fmt.Errorf("gateway: approval ttl %v is not in (0, 24h]", opt.ApprovalTTL)
	}
	s := &Service{g: g, opt: opt, classes: opt.Classes, now: g.now, live: map[string]*liveExec{}, tickets: map[string]*ticket{}}
	if s.classes == (identity.Classes{}) {
		s.classes = identity.DefaultClasses()
	}
	if err := s.createRevocationTable(ctx); err != nil {
		return nil, err
	}
	if err := s.createApprovalTable(ctx); err != nil {
		return nil, err
	}
	if err := s.loadRecentRevocations(ctx); err != nil {
		return nil, err
	}
	if err := g.db.QueryRowContext(ctx, `SELECT coalesce(max(rowid), 0) FROM etb_executions`).Scan(&s.before); err != nil {
		return nil, fmt.Errorf("gateway: read the last execution: %w", err)
	}
	s.routes()
	return s, nil
}

// Gateway returns the pipeline the Service serves.
func (s *Service) Gateway() *Gateway { return s.g }

// route is one API route: its pattern and the caller classes allowed.
type route struct {
	pattern string
	classes []string // nil: any authenticated caller of a known class
	handle  func(w http.ResponseWriter, r *http.Request, c *caller)
}

// Routes lists the patterns the Service serves ("METHOD /path"), for
// documentation and the spec test.
func (s *Service) Routes() []string {
	var out []string
	for _, rt := range s.table() {
		out = append(out, rt.pattern)
	}
	return append(out, "GET /healthz")
}

func (s *Service) table() []route {
	runners := []string{identity.ClassAgent, identity.ClassEnforcer}
	return []route{
		{"POST /v1/intents", runners, s.handleIntent},
		{"POST /v1/delegations", runners, s.handleDelegation},
		{"POST /v1/executions/{id}/events", runners, s.handleEvent},
		{"POST /v1/executions/{id}/lease", runners, s.handleLease},
		{"GET /v1/executions/{id}/watch", runners, s.handleWatch},
		{"GET /v1/executions/{id}/evidence", nil, s.handleEvidence},
		{"GET /v1/tasks/{id}/evidence", nil, s.handleTaskEvidence},
		{"GET /v1/tasks/{id}/tree", nil, s.handleTaskTree},
		{"GET /v1/trust", nil, s.handleTrust},
		{"POST /v1/revoke", []string{identity.ClassAdmin}, s.handleRevoke},
		{"GET /v1/approvals", []string{identity.ClassApprover, identity.ClassAdmin}, s.handleApprovalList},
		{"GET /v1/approvals/{id}", nil, s.handleApprovalGet},
		{"POST /v1/approvals/{id}/approve", []string{identity.ClassApprover}, s.handleApprove},
		{"POST /v1/approvals/{id}/reject", []string{identity.ClassApprover}, s.handleReject},
		{"GET /metrics", nil, s.handleMetrics},
	}
}

func (s *Service) routes() {
	s.mux = http.NewServeMux()
	for _, rt := range s.table() {
		rt := rt
		s.mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			c, err := s.caller(r)
			if err != nil {
				writeError(w, http.StatusUnauthorized, "unauthenticated", err)
				return
			}
			if c.class == "" {
				writeError(w, http.StatusForbidden, "forbidden", fmt.Errorf("%s belongs to no caller class", c.principal.ID))
				return
			}
			if rt.classes != nil && !contains(rt.classes, c.class) {
				writeError(w, http.StatusForbidden, "forbidden", fmt.Errorf("%s is of class %q; %s needs one of %v", c.principal.ID, c.class, rt.pattern, rt.classes))
				return
			}
			rt.handle(w, r, c)
		})
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// ServeHTTP implements http.Handler.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// A panic in a handler is a refusal, never a silent permit.
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			writeError(w, http.StatusInternalServerError, "internal", fmt.Errorf("panic: %v", v))
		}
	}()
	s.mux.ServeHTTP(w, r)
}

// caller is who sent a request, as established from the connection.
type caller struct {
	principal action.Principal
	id        spiffeid.ID
	class     string
	// holder is the x5t#S256 of the caller's certificate ("" for a unix
	// socket caller).
	holder string
}

// caller establishes the request's caller from its connection only.
func (s *Service) caller(r *http.Request) (*caller, error) {
	if r.TLS != nil {
		if len(r.TLS.PeerCertificates) == 0 {
			return nil, errors.New("the TLS client presented no certificate")
		}
		vc, err := s.verifyCert(*r.TLS)
		if err != nil {
			return nil, err
		}
		return &caller{principal: vc.principal, id: vc.id, class: s.classes.ClassOf(vc.id), holder: vc.holder}, nil
	}
	p, ok := identity.PrincipalFrom(r.Context())
	if !ok {
		return nil, errors.New("the connection is neither mTLS nor an attested unix socket")
	}
	id, err := spiffeid.FromString(p.ID)
	if err != nil {
		return nil, fmt.Errorf("attested principal %q: %w", p.ID, err)
	}
	return &caller{principal: p, id: id, class: s.classes.ClassOf(id)}, nil
}

// verifyCert verifies a TLS peer's chain against the bundle and works out
// its principal and thumbprint, caching the result per leaf (by the SHA-256
// of its DER, which is also its thumbprint) until the leaf expires.
func (s *Service) verifyCert(state tls.ConnectionState) (verifiedCert, error) {
	if s.opt.Bundle == nil {
		return verifiedCert{}, errors.New("this service has no trust bundle for TLS callers")
	}
	chain := state.PeerCertificates
	key := sha256.Sum256(chain[0].Raw)
	now := s.now()
	if v, ok := s.certs.Load(key); ok {
		vc := v.(verifiedCert)
		if now.Before(vc.notAfter) {
			return vc, nil
		}
		s.certs.Delete(key)
	}
	id, _, err := x509svid.Verify(chain, s.opt.Bundle)
	if err != nil {
		return verifiedCert{}, fmt.Errorf("client certificate (serial %s) is not a valid X.509-SVID: %w", chain[0].SerialNumber, err)
	}
	p, err := identity.PrincipalFromTLS(state)
	if err != nil {
		return verifiedCert{}, err
	}
	if p.ID != id.String() {
		return verifiedCert{}, fmt.Errorf("certificate names %s, verified %s", p.ID, id)
	}
	vc := verifiedCert{id: id, principal: p, holder: thumbprintOf(key), notAfter: chain[0].NotAfter}
	s.certs.Store(key, vc)
	return vc, nil
}

// Thumbprint is the x5t#S256 of a certificate: the unpadded base64url
// SHA-256 of its DER encoding (RFC 8705), the holder a grant's cnf names.
func Thumbprint(cert *x509.Certificate) string {
	return thumbprintOf(sha256.Sum256(cert.Raw))
}

// thumbprintOf encodes the SHA-256 of a certificate's DER as Thumbprint does.
func thumbprintOf(sum [sha256.Size]byte) string {
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// IntentRequest is the body of POST /v1/intents.
type IntentRequest struct {
	Action action.Spec `json:"action"`
	Task   struct {
		ID       string `json:"id"`
		ParentID string `json:"parent_id"`
	} `json:"task"`
	// WaitMS, for a require_approval decision, is how long to wait for a
	// human's decision before answering (at most 5 minutes).
	WaitMS int64 `json:"wait_ms,omitempty"`
	// Delegation is the delegation grant (compact JWS) a sub-agent acts
	// under: the action must be within its scope, runs in its task, and
	// the grant issued is its child.
	Delegation string `json:"delegation,omitempty"`
}

// Lease is the time an execution may keep running without renewal.
type Lease struct {
	Expires string `json:"expires"`
	TTLMS   int64  `json:"ttl_ms"`
}

// IntentResponse is the answer to POST /v1/intents.
type IntentResponse struct {
	Execution string           `json:"execution"`
	Principal action.Principal `json:"principal"`
	Digest    string           `json:"action_digest"`
	Decision  policy.Decision  `json:"decision"`
	// Grant is the compact JWS, only for a permit (or an approval given
	// while the request waited).
	Grant string `json:"grant,omitempty"`
	Lease *Lease `json:"lease,omitempty"`
	// Approval is the ticket of a require_approval decision.
	Approval *Approval `json:"approval,omitempty"`
	// Task is the task the action was placed in.
	Task string `json:"task"`
	// DelegatedTask, for a permitted delegation, is the sub-agent's task.
	DelegatedTask string `json:"delegated_task,omitempty"`
	// Traceparent is the W3C traceparent of the execution's span, when
	// the gateway traces: what the execution calls may continue the trace.
	Traceparent string `json:"traceparent,omitempty"`
}

func (s *Service) handleIntent(w http.ResponseWriter, r *http.Request, c *caller) {
	var req IntentRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	if req.Action.Kind == "" || req.Action.Name == "" {
		writeError(w, http.StatusBadRequest, "bad_request", errors.New("action.kind and action.name are required"))
		return
	}
	s.decideIntent(w, r, c, req)
}

// decideIntent runs an intent (or a delegation request, which is an intent of
// kind agent.delegate) through the pipeline and answers it.
func (s *Service) decideIntent(w http.ResponseWriter, r *http.Request, c *caller, req IntentRequest) {
	arrived := time.Now()
	if stale := s.maybeSweep(); len(stale) > 0 {
		go s.closeStale(context.WithoutCancel(r.Context()), stale)
	}
	if req.WaitMS < 0 {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Errorf("wait_ms %d is negative", req.WaitMS))
		return
	}
	opt := beginOptions{holder: c.holder}
	if req.Delegation != "" {
		d, err := s.g.verifyDelegation(r.Context(), req.Delegation, c.principal.ID)
		if err != nil {
			writeError(w, http.StatusForbidden, "delegation_invalid", err)
			return
		}
		if rv, err := s.delegationRevoked(r.Context(), d); err != nil {
			writeError(w, http.StatusInternalServerError, "not_authorized", fmt.Errorf("nothing was authorized: %w", err))
			return
		} else if rv != "" {
			writeError(w, http.StatusGone, "revoked", fmt.Errorf("delegation grant %s is revoked (revocation %s)", d.claims.ID, rv))
			return
		}
		opt.delegation = d
	}
	env := map[string]string{"mode": "gateway"}
	if s.opt.Host != "" {
		env["host"] = s.opt.Host
	}
	if tp := r.Header.Get("traceparent"); tp != "" {
		if _, err := telemetry.ParseTraceparent(tp); err == nil {
			env[telemetry.EnvTraceparent] = tp
		}
	}
	a := &action.Action{
		Time:      action.FormatTime(s.now()),
		Principal: c.principal,
		Action:    req.Action,
		Task:      action.Task{ID: req.Task.ID, ParentID: req.Task.ParentID},
		Env:       env,
	}
	ex, err := s.g.begin(r.Context(), a, opt)
	if errors.Is(err, ErrOutOfScope) {
		writeError(w, http.StatusForbidden, "out_of_scope", fmt.Errorf("nothing was authorized: %w", err))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "not_authorized", fmt.Errorf("nothing was authorized: %w", err))
		return
	}
	s.metrics.decision(ex.Decision.Decision, ex.Decision.Rules, time.Since(arrived))
	resp := IntentResponse{Execution: ex.ID, Principal: ex.Action.Principal, Digest: ex.Digest, Decision: ex.Decision, Task: ex.Action.Task.ID,
		Traceparent: ex.Traceparent()}
	if ex.Token != "" && ex.Action.Action.Kind == KindDelegate {
		// A delegation runs nothing: no lease to keep. Its grant is what
		// the sub-agent presents; its task is where the sub-agent acts.
		resp.Grant = ex.Token
		resp.DelegatedTask = ex.ID
		writeJSON(w, http.StatusOK, resp)
		return
	}
	if ex.Token != "" {
		le := s.register(r.Context(), ex, c.holder)
		le.mu.Lock()
		exp := s.now().Add(s.opt.LeaseTTL)
		if gexp := time.Unix(ex.Claims.Expiry, 0); gexp.Before(exp) {
			exp = gexp
		}
		le.lease = exp
		le.mu.Unlock()
		resp.Grant = ex.Token
		resp.Lease = &Lease{Expires: action.FormatTime(exp), TTLMS: exp.Sub(s.now()).Milliseconds()}
	}
	if isApprovalPending(ex.Decision) {
		le := s.register(r.Context(), ex, c.holder)
		t, err := s.openTicket(r.Context(), ex, c.holder)
		if err != nil {
			// No ticket, no approval: close the execution in the record.
			le.mu.Lock()
			if _, rerr := s.recordAs(context.WithoutCancel(r.Context()), le, lineage.TypeInterrupt, s.g.cfg.Issuer,
				lineage.InterruptBody{Reason: "approval_unavailable", Detail: err.Error()}); rerr == nil {
				le.terminal = "interrupted: approval_unavailable"
				s.forget(ex.ID)
			}
			le.mu.Unlock()
			writeError(w, http.StatusInternalServerError, "not_authorized", err)
			return
		}
		wait(r.Context(), t, time.Duration(req.WaitMS)*time.Millisecond)
		a := s.approvalView(r.Context(), t, c)
		resp.Approval = &a
		resp.Grant, resp.Lease = a.Grant, a.Lease
		a.Grant, a.Lease = "", nil
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Service) handleEvidence(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("id")
	if len(id) > 128 {
		writeError(w, http.StatusNotFound, "not_found", fmt.Errorf("no execution %.128q", id))
		return
	}
	// Any execution, whatever its decision, has evidence; an agent sees
	// only its own.
	events, _, err := s.g.Events(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err)
		return
	}
	var intent lineage.IntentBody
	if err := events[0].DecodeBody(&intent); err != nil {
		writeError(w, http.StatusInternalServerError, "evidence", err)
		return
	}
	if owner := intent.Action.Principal.ID; c.class == identity.ClassAgent && owner != c.principal.ID {
		writeError(w, http.StatusForbidden, "forbidden", fmt.Errorf("execution %s belongs to %s, not %s", id, owner, c.principal.ID))
		return
	}
	b, err := s.g.Evidence(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "evidence", err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *Service) handleTrust(w http.ResponseWriter, r *http.Request, c *caller) {
	t, err := s.g.Trust()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// APIError is the body of every error response.
type APIError struct {
	Code  string `json:"code"`
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code string, err error) {
	writeJSON(w, status, APIError{Code: code, Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":"internal","error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// Two writes into the response's buffer: appending the newline to b,
	// which json.Marshal sized exactly, would copy it.
	w.Write(b)
	io.WriteString(w, "\n")
}

// readJSON decodes a request body strictly: bounded size, no unknown
// fields, no trailing data.
func readJSON(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("content type %q, want application/json", ct)
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBytes+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	if dec.More() {
		return errors.New("request body: trailing data after the JSON document")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
