// Package client is the Go SDK of the etb gateway (`etb serve`): what an
// agent calls around each action, and what an enforcer uses to run a
// governed command against a remote gateway.
//
// Decide submits an intent and returns the decision with, for a permit,
// the signed grant and its lease. RunCommand is the whole enforcer flow of
// `etb run --gateway`: describe the command, decide, verify the grant
// locally (signature, audience, action digest recomputed from the file
// system, holder binding to this client's certificate, single use against
// a replay store on local disk), run it under its obligations while
// renewing the lease and watching for revocation, and report how it ended.
//
// The package owns the enforcer's side of continuous verification. It must
// never start a command whose grant it has not verified itself, never keep
// a command running past its lease without a renewal, and never drop a
// report: what cannot be delivered is spooled on local disk and delivered
// by FlushSpool.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// Options configure New.
type Options struct {
	// TLS is the mTLS client configuration (identity.ClientTLSConfig) for
	// an https base URL. Its client certificate is the holder grants are
	// bound to.
	TLS *tls.Config
	// Socket is the path of the gateway's unix socket; the base URL is then
	// only used for its path.
	Socket string
	// StateDir holds the enforcer's local state: the replay store, the
	// pinned trust file and the spool of undelivered reports. Required by
	// RunCommand and FlushSpool.
	StateDir string
	// Trust, if set, is the gateway's trust file; otherwise it is fetched
	// from GET /v1/trust on first use and pinned in StateDir/trust.json.
	Trust *proof.Trust
	// ClockSkew is the tolerance of grant time checks (grant.DefaultSkew
	// if 0).
	ClockSkew time.Duration
	// ApprovalWait is how long RunCommand waits for a human when the
	// policy requires approval (0: do not wait; the command is refused).
	ApprovalWait time.Duration
}

// Client talks to one gateway. It is safe for concurrent use.
type Client struct {
	base   string
	opt    Options
	hc     *http.Client // requests with a bounded lifetime, over HTTP/1.1
	stream *http.Client // watch streams and long polls, over HTTP/2 if offered

	probe sync.Once
	feat  sandbox.Features

	mu     sync.Mutex
	db     *sql.DB
	replay *grant.SQLiteReplayStore
	trust  *proof.Trust
}

// requestTimeout bounds every non-streaming request.
const requestTimeout = 10 * time.Second

// New returns a client of the gateway at baseURL ("https://host:port" with
// opt.TLS, or any "http://NAME" with opt.Socket).
func New(baseURL string, opt Options) (*Client, error) {
	baseURL = strings.TrimSuffix(baseURL, "/")
	// Calls (bounded request and answer) and watch streams go over two
	// transports. Calls use HTTP/1.1 keep-alive connections: over TLS,
	// Go's HTTP/1.1 costs less CPU per request than HTTP/2 on both sides
	// (the gateway benchmark decides about 15% more per second,
	// docs/PERFORMANCE.md). Streams use HTTP/2 when the gateway offers
	// it, all on one connection: a watch stream open for each running
	// action would otherwise hold a connection of its own, and a new
	// action would pay a new mTLS handshake.
	calls := &http.Transport{MaxIdleConnsPerHost: 64}
	streams := &http.Transport{MaxIdleConnsPerHost: 64}
	if opt.TLS != nil {
		h1 := opt.TLS.Clone()
		h1.NextProtos = []string{"http/1.1"}
		calls.TLSClientConfig = h1
		// A non-nil, empty TLSNextProto: this transport never speaks h2.
		calls.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		streams.TLSClientConfig, streams.ForceAttemptHTTP2 = opt.TLS, true
	}
	switch {
	case opt.Socket != "":
		sock := opt.Socket
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		calls.DialContext, streams.DialContext = dial, dial
		if !strings.HasPrefix(baseURL, "http://") {
			baseURL = "http://etb"
		}
	case strings.HasPrefix(baseURL, "https://"):
		if opt.TLS == nil {
			return nil, fmt.Errorf("client: %s needs a TLS configuration with a client certificate", baseURL)
		}
	default:
		return nil, fmt.Errorf("client: base URL %q: want https://HOST:PORT (mTLS) or a unix socket", baseURL)
	}
	c := &Client{base: baseURL, opt: opt, hc: &http.Client{Transport: calls, Timeout: requestTimeout},
		stream: &http.Client{Transport: streams}, trust: opt.Trust}
	return c, nil
}

// Close releases the local state.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db != nil {
		err := c.db.Close()
		c.db, c.replay = nil, nil
		return err
	}
	return nil
}

// Error is an error answer of the gateway.
type Error struct {
	Status int    `json:"-"`
	Code   string `json:"code"`
	Msg    string `json:"error"`
}

func (e *Error) Error() string { return fmt.Sprintf("gateway: %d %s: %s", e.Status, e.Code, e.Msg) }

// Codes of Error that an enforcer acts on.
const (
	CodeRevoked      = "revoked"
	CodePolicyDenied = "policy_denied"
	CodeEnded        = "ended"
	// CodeLeaseExpired: the execution may not start (or, never started,
	// be renewed): its lease expired.
	CodeLeaseExpired = "lease_expired"
)

// IsCode reports whether err is a gateway Error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tp, ok := ctx.Value(traceparentKey{}).(string); ok {
		req.Header.Set("traceparent", tp)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := readAnswer(resp)
	if err != nil {
		return fmt.Errorf("client: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Code == "" {
			e.Code, e.Msg = "http", strings.TrimSpace(string(b))
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("client: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// maxAnswer bounds the body of an answer the client reads.
const maxAnswer = 64 << 20

// readAnswer reads resp's body, at most maxAnswer bytes: into one buffer
// of the declared length when there is one (io.ReadAll grows its buffer
// several times for a typical answer), else as it comes.
func readAnswer(resp *http.Response) ([]byte, error) {
	if n := resp.ContentLength; n >= 0 && n <= maxAnswer {
		b := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
}

// Task places an intent in a task.
type Task struct {
	ID       string `json:"id"`
	ParentID string `json:"parent_id"`
	// Delegation is the delegation grant a sub-agent acts under (see
	// Client.Delegate): the action must be within its scope and runs in
	// its task (ID empty) or a task directly below it (ParentID = its
	// task).
	Delegation string `json:"-"`
}

// Lease is how long an execution may run without renewal.
type Lease struct {
	Expires string `json:"expires"`
	TTLMS   int64  `json:"ttl_ms"`
}

// TTL is the lease's lifetime as a duration.
func (l Lease) TTL() time.Duration { return time.Duration(l.TTLMS) * time.Millisecond }

// Authorization is the gateway's answer to an intent.
type Authorization struct {
	Execution string           `json:"execution"`
	Principal action.Principal `json:"principal"`
	Digest    string           `json:"action_digest"`
	Decision  policy.Decision  `json:"decision"`
	// Grant is the compact JWS grant: for a permit, or for a
	// require_approval decision approved while the request waited.
	Grant string `json:"grant,omitempty"`
	Lease *Lease `json:"lease,omitempty"`
	// Approval is the ticket of a require_approval decision.
	Approval *Approval `json:"approval,omitempty"`
	// Task is the task the action was placed in; DelegatedTask, for a
	// permitted delegation, the sub-agent's task.
	Task          string `json:"task,omitempty"`
	DelegatedTask string `json:"delegated_task,omitempty"`
}

// Approval is an approval ticket.
type Approval struct {
	ID        string       `json:"id"`
	Execution string       `json:"execution"`
	Status    string       `json:"status"` // pending, approved, rejected, expired, withdrawn
	Expires   string       `json:"expires"`
	Digest    string       `json:"action_digest"`
	Principal string       `json:"principal"`
	Approver  string       `json:"approver,omitempty"`
	Action    *action.Spec `json:"action,omitempty"`
	Grant     string       `json:"grant,omitempty"`
	Lease     *Lease       `json:"lease,omitempty"`
}

// Permitted reports whether the answer carries a grant to run with: a
// permit, or an approved require_approval decision.
func (a *Authorization) Permitted() bool {
	if a.Grant == "" || a.Lease == nil {
		return false
	}
	return a.Decision.Decision == policy.Permit ||
		a.Decision.Decision == policy.RequireApproval && a.Approval != nil && a.Approval.Status == "approved"
}

// Decide submits the intent to perform spec in task. The caller's identity
// is its connection's; a non-permit decision is not an error.
func (c *Client) Decide(ctx context.Context, spec action.Spec, task Task) (*Authorization, error) {
	return c.DecideWait(ctx, spec, task, 0)
}

// DecideWait is Decide, waiting up to wait for a human's decision when the
// policy requires approval: the answer then carries the grant if it was
// approved in time, or the ticket's status (pending, rejected, expired).
func (c *Client) DecideWait(ctx context.Context, spec action.Spec, task Task, wait time.Duration) (*Authorization, error) {
	in := struct {
		Action     action.Spec `json:"action"`
		Task       Task        `json:"task"`
		WaitMS     int64       `json:"wait_ms,omitempty"`
		Delegation string      `json:"delegation,omitempty"`
	}{spec, task, wait.Milliseconds(), task.Delegation}
	var out Authorization
	hc := c.hc
	if wait > 0 {
		hc = c.stream // the request may outlive requestTimeout
	}
	if err := c.do(ctx, hc, http.MethodPost, "/v1/intents", in, &out); err != nil {
		return nil, err
	}
	if out.Execution == "" || out.Decision.Decision == "" {
		return nil, fmt.Errorf("client: intent answer has no execution or decision")
	}
	return &out, nil
}

// Report records an event (start, end, interrupt, heartbeat) of an
// execution. body is the event's body (lineage.StartBody, ...).
func (c *Client) Report(ctx context.Context, execution, typ string, body any) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("client: encode %s body: %w", typ, err)
	}
	in := struct {
		Type string          `json:"type"`
		Body json.RawMessage `json:"body"`
	}{typ, raw}
	return c.do(ctx, c.hc, http.MethodPost, "/v1/executions/"+execution+"/events", in, nil)
}

// Renew renews an execution's lease. A revoked execution gives an Error
// with CodeRevoked, one the current policy denies CodePolicyDenied.
func (c *Client) Renew(ctx context.Context, execution string) (Lease, error) {
	var out struct {
		Lease Lease `json:"lease"`
	}
	if err := c.do(ctx, c.hc, http.MethodPost, "/v1/executions/"+execution+"/lease", struct{}{}, &out); err != nil {
		return Lease{}, err
	}
	return out.Lease, nil
}

// Evidence fetches an execution's evidence bundle.
func (c *Client) Evidence(ctx context.Context, execution string) (*proof.Bundle, error) {
	var raw json.RawMessage
	if err := c.do(ctx, c.hc, http.MethodGet, "/v1/executions/"+execution+"/evidence", nil, &raw); err != nil {
		return nil, err
	}
	return proof.ParseBundle(bytes.NewReader(raw))
}

// Approvals lists the pending approval tickets (approvers and admins).
func (c *Client) Approvals(ctx context.Context) ([]Approval, error) {
	var out struct {
		Approvals []Approval `json:"approvals"`
	}
	if err := c.do(ctx, c.hc, http.MethodGet, "/v1/approvals", nil, &out); err != nil {
		return nil, err
	}
	return out.Approvals, nil
}

// Approval returns a ticket, waiting up to wait for it to be decided. Its
// requester gets the grant once it is approved.
func (c *Client) Approval(ctx context.Context, id string, wait time.Duration) (*Approval, error) {
	var out Approval
	hc := c.hc
	if wait > 0 {
		hc = c.stream
	}
	if err := c.do(ctx, hc, http.MethodGet, fmt.Sprintf("/v1/approvals/%s?wait_ms=%d", id, wait.Milliseconds()), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Approve approves a ticket (approvers only); the approver recorded is
// this client's identity.
func (c *Client) Approve(ctx context.Context, id, comment string) (*Approval, error) {
	return c.decide(ctx, id, "approve", comment)
}

// Reject rejects a ticket (approvers only).
func (c *Client) Reject(ctx context.Context, id, comment string) (*Approval, error) {
	return c.decide(ctx, id, "reject", comment)
}

func (c *Client) decide(ctx context.Context, id, verb, comment string) (*Approval, error) {
	var out Approval
	in := struct {
		Comment string `json:"comment,omitempty"`
	}{comment}
	if err := c.do(ctx, c.hc, http.MethodPost, "/v1/approvals/"+id+"/"+verb, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RevokeRequest names what to revoke: exactly one field.
type RevokeRequest struct {
	Execution string `json:"execution,omitempty"`
	Grant     string `json:"grant,omitempty"`
	Task      string `json:"task,omitempty"`
	Agent     string `json:"agent,omitempty"`
	All       bool   `json:"all,omitempty"`
}

// RevokeResult is the gateway's answer to a revocation; it arrives once
// every covered execution's enforcer was told.
type RevokeResult struct {
	Revocation string   `json:"revocation"`
	Revoked    []string `json:"revoked"`
}

// Revoke revokes executions (admin callers only).
func (c *Client) Revoke(ctx context.Context, r RevokeRequest) (*RevokeResult, error) {
	var out RevokeResult
	if err := c.do(ctx, c.hc, http.MethodPost, "/v1/revoke", r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Trust returns the gateway's trust file: opt.Trust, else the one pinned
// in StateDir/trust.json, else the one the gateway serves, which is then
// pinned. A pinned file is never replaced by a served one.
func (c *Client) Trust(ctx context.Context) (*proof.Trust, error) {
	c.mu.Lock()
	t := c.trust
	c.mu.Unlock()
	if t != nil {
		return t, nil
	}
	pin := ""
	if c.opt.StateDir != "" {
		pin = filepath.Join(c.opt.StateDir, "trust.json")
		if f, err := os.Open(pin); err == nil {
			t, err := proof.ParseTrust(f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("client: pinned trust %s: %w", pin, err)
			}
			c.setTrust(t)
			return t, nil
		}
	}
	var raw json.RawMessage
	if err := c.do(ctx, c.hc, http.MethodGet, "/v1/trust", nil, &raw); err != nil {
		return nil, err
	}
	t, err := proof.ParseTrust(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("client: served trust: %w", err)
	}
	if pin != "" {
		if err := os.MkdirAll(c.opt.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		if err := os.WriteFile(pin, raw, 0o600); err != nil {
			return nil, fmt.Errorf("client: pin trust: %w", err)
		}
	}
	c.setTrust(t)
	return t, nil
}

func (c *Client) setTrust(t *proof.Trust) {
	c.mu.Lock()
	c.trust = t
	c.mu.Unlock()
}

// replayStore opens the enforcer's replay store in StateDir/enforcer.db.
func (c *Client) replayStore(ctx context.Context) (*grant.SQLiteReplayStore, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.replay != nil {
		return c.replay, nil
	}
	if c.opt.StateDir == "" {
		return nil, errors.New("client: no StateDir for the enforcer's replay store")
	}
	if err := os.MkdirAll(c.opt.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	db, err := ledger.OpenSQLite(ctx, filepath.Join(c.opt.StateDir, "enforcer.db"))
	if err != nil {
		return nil, err
	}
	rs, err := grant.NewSQLiteReplayStore(ctx, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	c.db, c.replay = db, rs
	return rs, nil
}

// Holder returns the x5t#S256 of the client certificate this client
// presents now ("" without TLS): the holder a grant issued to it names.
func (c *Client) Holder() (string, error) {
	if c.opt.TLS == nil {
		return "", nil
	}
	var cert *tls.Certificate
	switch {
	case c.opt.TLS.GetClientCertificate != nil:
		var err error
		if cert, err = c.opt.TLS.GetClientCertificate(&tls.CertificateRequestInfo{}); err != nil {
			return "", fmt.Errorf("client: own certificate: %w", err)
		}
	case len(c.opt.TLS.Certificates) > 0:
		cert = &c.opt.TLS.Certificates[0]
	}
	if cert == nil || len(cert.Certificate) == 0 {
		return "", errors.New("client: the TLS configuration has no client certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return "", fmt.Errorf("client: own certificate: %w", err)
	}
	return thumbprint(leaf), nil
}
