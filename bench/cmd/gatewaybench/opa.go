package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/identity"
	opaversion "github.com/open-policy-agent/opa/v1/version"
)

//go:embed default.rego
var defaultRego string

// opaModule is the main package of OPA's module; opaVersion is the version
// bench/go.mod requires, so the server is the same OPA as policybench's.
const opaModule = "github.com/open-policy-agent/opa"

func opaVersion() string { return "v" + opaversion.Version }

// decisionPath is the OPA Data API path of default.rego's decision.
const decisionPath = "/v1/data/etb/authz/decision"

// ensureOPA returns the path of an opa binary of opaVersion, building it
// with `go install MODULE@VERSION` into the user cache directory if it is
// not there yet. go's output goes to log.
func ensureOPA(ctx context.Context, log io.Writer) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("opa: no cache directory for the binary (pass -opa): %w", err)
	}
	dir := filepath.Join(cache, "etb-gatewaybench", "opa-"+opaVersion())
	bin := filepath.Join(dir, "opa")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("opa: %w", err)
	}
	gobin, err := os.MkdirTemp(filepath.Dir(dir), "build-")
	if err != nil {
		return "", fmt.Errorf("opa: %w", err)
	}
	defer os.RemoveAll(gobin)
	fmt.Fprintf(log, "gatewaybench: building %s@%s into %s (once)...\n", opaModule, opaVersion(), dir)
	cmd := exec.CommandContext(ctx, "go", "install", opaModule+"@"+opaVersion())
	cmd.Dir = gobin // outside any module: @version builds with OPA's own go.mod
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOWORK=off", "GOFLAGS=")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("opa: go install %s@%s: %w (or pass -opa PATH)", opaModule, opaVersion(), err)
	}
	if err := os.Rename(gobin, dir); err != nil && !errors.Is(err, os.ErrExist) {
		if _, serr := os.Stat(bin); serr != nil { // lost no race: a real failure
			return "", fmt.Errorf("opa: %w", err)
		}
	}
	return bin, nil
}

// opaServer is a running `opa run --server` child process.
type opaServer struct {
	*serverProc
	url string
}

// startOPA runs bin as an OPA server on 127.0.0.1 with the Rego module rego
// written under dir, and waits until its /health answers (up to 30 s).
func startOPA(ctx context.Context, bin, dir, rego string, verbose io.Writer) (*opaServer, error) {
	if bin == "" {
		return nil, errors.New("opa: no binary (-opa)")
	}
	pol := filepath.Join(dir, "default.rego")
	if err := os.WriteFile(pol, []byte(rego), 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "run", "--server", "--addr", addr, "--log-level", "error", "--skip-version-check", pol)
	p, err := startServer(ctx, "opa", cmd, verbose, &http.Client{Timeout: time.Second}, "http://"+addr+"/health")
	if err != nil {
		return nil, err
	}
	return &opaServer{serverProc: p, url: "http://" + addr}, nil
}

// close kills the server process (which this benchmark started) and reaps it.
func (s *opaServer) close() { s.stop(0) }

// opaClient is one benchmark client of the OPA server: its own keep-alive
// connection, and its principal.
type opaClient struct {
	hc        *http.Client
	url       string
	principal action.Principal
	n         int
}

func newOPAClient(url string, i int, td string) *opaClient {
	tr := &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1, DisableCompression: true}
	return &opaClient{
		hc:        &http.Client{Transport: tr, Timeout: 10 * time.Second},
		url:       url + decisionPath,
		principal: action.Principal{ID: fmt.Sprintf("spiffe://%s/agent/bench-%d", td, i), Attestation: identity.AttestationX509SVID},
	}
}

// decide asks OPA about spec, in the form etb's gateway would evaluate it
// (a whole etb.action/v1 document), and returns the outcome.
func (c *opaClient) decide(ctx context.Context, spec action.Spec) (*outcome, error) {
	c.n++
	a := &action.Action{
		V:         action.Version,
		ID:        fmt.Sprintf("%s-%d", c.principal.ID, c.n),
		Time:      action.FormatTime(time.Now()),
		Principal: c.principal,
		Action:    spec,
		Env:       map[string]string{"mode": "gateway"},
	}
	a.Task = action.Task{ID: a.ID, RootID: a.ID}
	if err := a.Normalize(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(struct {
		Input *action.Action `json:"input"`
	}{a})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("opa: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	return opaOutcome(raw)
}

// opaOutcome parses a Data API answer {"result": {"decision", "rules",
// "timeout_s"}}. An answer without a result (the rule is undefined) is an
// error, never a default.
func opaOutcome(raw []byte) (*outcome, error) {
	var doc struct {
		Result *struct {
			Decision string   `json:"decision"`
			Rules    []string `json:"rules"`
			TimeoutS *int64   `json:"timeout_s"`
		} `json:"result"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("opa answer %q: %w", raw, err)
	}
	r := doc.Result
	if r == nil || r.Decision == "" || len(r.Rules) == 0 {
		return nil, fmt.Errorf("opa answer %q has no decision or rules", raw)
	}
	o := &outcome{Decision: r.Decision, Rules: r.Rules}
	if r.TimeoutS != nil {
		o.Timeout = time.Duration(*r.TimeoutS) * time.Second
	}
	return o, nil
}

// runOPA measures OPA's server.
func runOPA(ctx context.Context, c *config) (*Result, error) {
	dir, err := os.MkdirTemp("", "gatewaybench-opa-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var verbose io.Writer = io.Discard
	if c.Verbose {
		verbose = os.Stderr
	}
	s, err := startOPA(ctx, c.OPA, dir, defaultRego, verbose)
	if err != nil {
		return nil, err
	}
	defer s.close()
	sp, err := specs()
	if err != nil {
		return nil, err
	}
	clients := make([]*opaClient, c.Clients)
	for i := range clients {
		clients[i] = newOPAClient(s.url, i, "etb.local")
	}
	ins := inputs()
	seen, err := precheck(ctx, c.Clients, func(ctx context.Context, cl, in int) (*outcome, error) {
		return clients[cl].decide(ctx, sp[in])
	})
	if err != nil {
		return nil, err
	}
	r, err := drive(ctx, s.cmd.Process.Pid, c.Clients, c.Duration, func(ctx context.Context, cl, in int) error {
		o, err := clients[cl].decide(ctx, sp[in])
		if err == nil && o.Decision != ins[in].want.Decision {
			err = fmt.Errorf("decided %v, want %v", o, ins[in].want)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	r.System, r.Outcomes = "opa", seen
	r.Detail = fmt.Sprintf("`opa run --server` %s (%s@%s) over plain HTTP/1.1 keep-alive (one connection per client), default.rego (the Rego equivalent of etb's default policy); decides only: no TLS, no signature, no log",
		opaVersion(), opaModule, opaVersion())
	return r, nil
}
