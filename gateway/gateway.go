// Package gateway is the governed-execution pipeline: the seven lifecycle
// phases (intent → policy → authorization → boundary active → governed
// execution → continuous verification → proof persisted) as one sequence of
// calls, used in-process by `etb run` (embedded mode).
//
// It owns the order of the phases and their durability: the intent, the
// decision and, for a permit, the grant are appended to the ledger in one
// durable batch before Begin returns, so nothing can start before its
// authorization is on disk. It must never hand out a grant for a decision
// that is not a permit, never let an error become a permit, and never keep a
// raw token in the ledger (only its hash; the token goes to the evidence).
package gateway

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/telemetry"
)

// Gateway holds the open home: policy, signing keys, ledger and indexes.
type Gateway struct {
	home     Home
	cfg      Config
	db       *sql.DB
	log      *ledger.Log
	st       *ledger.SQLiteStorage // the log's storage, closed after it
	policy   atomic.Pointer[policy.Bundle]
	issuer   *grant.Issuer
	verifier *grant.Verifier
	grantPub ed25519.PublicKey
	logPub   ed25519.PublicKey
	// featureOnce probes once what the kernel sandbox can enforce here.
	featureOnce sync.Once
	featureSet  sandbox.Features
	now         func() time.Time
	// taskLocks serialise the decisions of each task, limitMu the use of
	// limit slots (see task.go).
	taskLocks keyedLocks
	limitMu   sync.Mutex
	tracer    *telemetry.Tracer
	// stmts caches the prepared statements of the per-decision queries.
	stmts *ledger.Statements
}

// Options adjust Open. The zero value is the embedded default.
type Options struct {
	// PolicyPath overrides the home's policy.yaml.
	PolicyPath string
	// Now overrides the clock (tests).
	Now func() time.Time
	// Tracer, if set, gets one span per execution (telemetry); the caller
	// owns it and shuts it down after Close.
	Tracer *telemetry.Tracer
}

// Open opens (and on first use initialises) the home at dir.
func Open(ctx context.Context, dir string, opt Options) (*Gateway, error) {
	h := Home{Dir: dir}
	if _, err := h.Init(ctx); err != nil {
		return nil, err
	}
	cfg, err := h.LoadConfig()
	if err != nil {
		return nil, err
	}
	polPath := opt.PolicyPath
	if polPath == "" {
		polPath = h.PolicyPath()
	}
	src, err := os.ReadFile(polPath)
	if err != nil {
		return nil, fmt.Errorf("gateway: read policy: %w", err)
	}
	pol, err := policy.Load(src)
	if err != nil {
		return nil, fmt.Errorf("gateway: policy %s: %w", polPath, err)
	}
	grantKey, logKey, err := h.keys()
	if err != nil {
		return nil, err
	}
	now := opt.Now
	if now == nil {
		now = time.Now
	}
	db, err := ledger.OpenSQLite(ctx, h.DBPath())
	if err != nil {
		return nil, err
	}
	g := &Gateway{home: h, cfg: cfg, db: db, now: now, tracer: opt.Tracer, stmts: ledger.NewStatements(db),
		grantPub: grantKey.Public().(ed25519.PublicKey), logPub: logKey.Public().(ed25519.PublicKey)}
	g.policy.Store(pol)
	fail := func(err error) (*Gateway, error) { g.Close(); return nil, err }
	if err := g.createIndex(ctx); err != nil {
		return fail(err)
	}
	if err := g.createTaskTables(ctx); err != nil {
		return fail(err)
	}
	if _, err := g.db.ExecContext(ctx, delegationSchema); err != nil {
		return fail(fmt.Errorf("gateway: create delegation tables: %w", err))
	}
	if err := g.rememberPolicy(ctx, pol); err != nil {
		return fail(err)
	}
	replay, err := grant.NewSQLiteReplayStore(ctx, db)
	if err != nil {
		return fail(err)
	}
	signer, err := ledger.NewSigner(cfg.LogOrigin, logKey)
	if err != nil {
		return fail(err)
	}
	if g.st, err = ledger.NewSQLiteStorage(ctx, db); err != nil {
		return fail(err)
	}
	if g.log, err = ledger.New(ctx, g.st, signer, cfg.LogOrigin); err != nil {
		return fail(err)
	}
	g.issuer = grant.NewIssuer(grantKey, cfg.Issuer, cfg.GrantTTL.D(), now)
	g.verifier = grant.NewVerifier(map[string]ed25519.PublicKey{grant.KeyID(g.grantPub): g.grantPub}, replay, cfg.ClockSkew.D(), now)
	return g, nil
}

// features reports what this host's kernel sandbox can enforce.
func (g *Gateway) features() sandbox.Features {
	g.featureOnce.Do(func() { g.featureSet = sandbox.Probe() })
	return g.featureSet
}

// Close releases the ledger and the database.
func (g *Gateway) Close() error {
	var errs []error
	if g.log != nil {
		errs = append(errs, g.log.Close())
	}
	if g.st != nil {
		errs = append(errs, g.st.Close())
	}
	if g.db != nil {
		errs = append(errs, g.db.Close())
	}
	return errors.Join(errs...)
}

// LogStats reports how many append batches and entries this Gateway's
// ledger committed since it was opened (group commit at work: entries per
// batch).
func (g *Gateway) LogStats() ledger.Stats { return g.log.Stats() }

// Config returns the home's configuration.
func (g *Gateway) Config() Config { return g.cfg }

// Policy returns the loaded policy bundle.
func (g *Gateway) Policy() *policy.Bundle { return g.policy.Load() }

// SetPolicy replaces the policy every later decision is made with (a
// reload). The bundle's source is stored first, so evidence of decisions
// made under it can always include it.
func (g *Gateway) SetPolicy(ctx context.Context, b *policy.Bundle) error {
	if b == nil {
		return errors.New("gateway: set policy: nil bundle")
	}
	if err := g.rememberPolicy(ctx, b); err != nil {
		return err
	}
	g.policy.Store(b)
	return nil
}

// Log returns the ledger.
func (g *Gateway) Log() *ledger.Log { return g.log }

// Verifier returns the enforcer-side grant verifier (with the persistent
// replay store).
func (g *Gateway) Verifier() *grant.Verifier { return g.verifier }

// LogVerifier returns the note verifier of the log's checkpoints.
func (g *Gateway) LogVerifier() (note.Verifier, error) {
	vkey, err := ledger.VerifierKey(g.cfg.LogOrigin, g.logPub)
	if err != nil {
		return nil, err
	}
	return note.NewVerifier(vkey)
}

// Execution is one governed execution after its decision.
type Execution struct {
	g        *Gateway
	ID       string
	Action   action.Action
	Digest   string
	Decision policy.Decision
	// Token and Claims are set only for a permit.
	Token  string
	Claims *grant.Claims
	// mu orders Record calls: an event's seq, its prev link and its place
	// in the ledger must agree, even when the egress proxy and the run
	// record events concurrently.
	mu    sync.Mutex
	chain *lineage.Chain
	// task is the state Begin decided on, until the decision is durable;
	// started is set once a start event is.
	task    *taskState
	started bool
	// lineage is what revocations of its ancestors reach it by.
	lineage lineageRefs
	// span is the execution's trace span (nil-safe), ended with its
	// terminal event.
	span *telemetry.Span
	// startErr is why BeginStart did not start it; use is the grant's
	// single use its start consumes, in the same transaction.
	startErr error
	use      *deferredUse
	// approvedUse is what an approved execution spends on its limit slots,
	// reserved with its grant (a require_approval decision reserves
	// nothing).
	approvedUse []policy.LimitSlot
}

// Traceparent is the W3C traceparent of the execution's span, to
// propagate to what the execution calls ("" when there is none).
func (ex *Execution) Traceparent() string { return ex.span.Traceparent() }

// Begin runs phases 1–3: it records the intent, evaluates the policy,
// issues a grant for a permit, and makes all of it durable in one ledger
// batch. The returned execution carries the decision; a non-permit decision
// is not an error. An error means nothing was authorized and nothing may run.
func (g *Gateway) Begin(ctx context.Context, a *action.Action) (*Execution, error) {
	return g.begin(ctx, a, beginOptions{})
}

// beginOptions are what the service adds to an intent: the holder (the
// x5t#S256 of the caller's certificate) a grant is bound to (claim cnf),
// and the delegation grant the caller acts under.
type beginOptions struct {
	holder     string
	delegation *delegation
	// start, for BeginStart: the enforcer's half, run for a permit before
	// the batch is appended (see BeginStart).
	start func(ex *Execution) (digest string, body lineage.StartBody, err error)
}

// begin is Begin with the service's options.
func (g *Gateway) begin(ctx context.Context, a *action.Action, opt beginOptions) (*Execution, error) {
	in := *a
	if in.ID == "" {
		in.ID = action.NewID(g.now())
	}
	if in.Time == "" {
		in.Time = action.FormatTime(g.now())
	}
	if opt.delegation != nil {
		// A sub-agent acts in the task its delegation created, or in a
		// task below it; never elsewhere.
		if err := opt.delegation.placeTask(&in.Task); err != nil {
			return nil, err
		}
	}
	fresh := in.Task.ID == "" && in.Task.ParentID == ""
	if in.Task.ID == "" {
		in.Task.ID = in.ID
		if in.Action.Kind == KindDelegate {
			// The delegation's own id names the sub-agent's task, below
			// this one.
			in.Task.ID = action.NewID(g.now())
		}
	}
	if d := opt.delegation; d != nil && in.Action.Kind != KindDelegate {
		// Whatever the policy would say, nothing outside the delegation's
		// scope is even considered: it could otherwise be approved later.
		if err := grant.CheckActionInScope(d.claims, in.Action); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrOutOfScope, err)
		}
	}
	if d := opt.delegation; d != nil {
		env := make(map[string]string, len(in.Env)+1)
		for k, v := range in.Env {
			env[k] = v
		}
		env[EnvDelegation] = d.claims.ID
		in.Env = env
	} else if _, ok := in.Env[EnvDelegation]; ok {
		return nil, fmt.Errorf("gateway: env %q is the gateway's to set", EnvDelegation)
	}
	// Decisions of one task are serialised from reading its state to the
	// durable append of the decision (see task.go).
	unlockTask, st, err := g.lockTask(ctx, in.Task.ID, in.Task.ParentID, fresh && a.ID == "")
	if err != nil {
		return nil, err
	}
	defer unlockTask()
	// A task that belongs to a delegation (created by it, or below one it
	// created) is acted in only under that delegation.
	switch d := opt.delegation; {
	case st.delegation == "" && d != nil:
		return nil, fmt.Errorf("%w: task %s belongs to no delegation", ErrOutOfScope, st.id)
	case st.delegation != "" && d == nil:
		return nil, fmt.Errorf("%w: task %s belongs to delegation %s: present its grant", ErrOutOfScope, st.id, st.delegation)
	case st.delegation != "" && d.claims.ID != st.delegation:
		return nil, fmt.Errorf("%w: task %s belongs to delegation %s, not %s", ErrOutOfScope, st.id, st.delegation, d.claims.ID)
	}
	// The task's place and state come from the record, never from the
	// agent.
	in.Task.RootID, in.Task.ParentID = st.root, st.parent
	in.Task.Labels, in.Task.Recent, in.Task.StateVersion = st.labels, st.recent, st.version
	in.Task.Usage = map[string]float64{}
	in.Task.Step = st.version
	if err := in.Normalize(); err != nil {
		return nil, err
	}
	digest, err := in.Action.Digest()
	if err != nil {
		return nil, err
	}
	pol := g.Policy()
	slots, _ := pol.LimitSlots(ctx, &in)
	if len(slots) > 0 {
		// Limit slots are shared across tasks: one lock from reading their
		// usage to the durable reservation.
		g.limitMu.Lock()
		defer g.limitMu.Unlock()
		now := g.now()
		for _, sl := range slots {
			used, err := g.usage(ctx, sl.Slot, sl.Window, now)
			if err != nil {
				return nil, err
			}
			in.Task.Usage[sl.Slot] = used
		}
	}
	_, span := g.tracer.StartExecution(ctx, in.Env[telemetry.EnvTraceparent], telemetry.AttrsFromAction(&in, digest))
	ex := &Execution{g: g, ID: in.ID, Action: in, Digest: digest, task: st, span: span,
		chain: lineage.NewChain(in.ID, in.Task.ID, in.Task.ParentID), lineage: lineageRefs{tasks: st.ancestors}}
	if opt.delegation != nil {
		ex.lineage.links = opt.delegation.chain
	}

	var entries [][]byte
	var events []*lineage.Event
	add := func(typ, actor string, body any) error {
		e, b, err := ex.chain.Next(typ, actor, action.FormatTime(g.now()), body)
		if err != nil {
			return err
		}
		events, entries = append(events, e), append(entries, b)
		return nil
	}
	if err := add(lineage.TypeIntent, in.Principal.ID, lineage.IntentBody{Action: in, ActionDigest: digest}); err != nil {
		return nil, err
	}
	// If the limit slots could not be worked out (slotErr), Evaluate meets
	// the same error on the same input and denies (etb.error): the
	// verifier re-derives exactly that.
	ex.Decision = pol.Evaluate(ctx, &in)
	span.Decision(ex.Decision)
	if err := add(lineage.TypeDecision, g.cfg.Issuer, ex.Decision); err != nil {
		return nil, err
	}
	if ex.Decision.Decision == policy.Permit {
		claims, refusal := g.grantClaims(&in, digest, ex.Decision, opt)
		if refusal == nil {
			var token string
			token, claims, refusal = g.issueChecked(claims, opt.delegation)
			if refusal == nil {
				ex.Token, ex.Claims = token, &claims
			}
		}
		if refusal != nil {
			// The permit stands in the record, but without a grant nothing
			// can run: record why and refuse.
			err = fmt.Errorf("gateway: issue grant: %w", refusal)
			span.End("interrupted: grant_failed", err)
			if aerr := add(lineage.TypeInterrupt, g.cfg.Issuer, lineage.InterruptBody{Reason: "grant_failed", Detail: err.Error()}); aerr == nil {
				g.append(ctx, ex, events, entries)
			}
			return nil, err
		}
		span.Grant(ex.Claims.ID)
		if err := add(lineage.TypeGrant, g.cfg.Issuer, lineage.GrantBody{
			JTI: ex.Claims.ID, TokenSHA256: grant.TokenHash(ex.Token), ADG: ex.Claims.ADG, Pol: ex.Claims.Pol,
			Aud: ex.Claims.Audience, Exp: ex.Claims.Expiry,
		}); err != nil {
			return nil, err
		}
		if opt.start != nil {
			// BeginStart: the grant is verified against what is about to
			// run, and the start (or the refusal) joins the batch.
			body, err := g.verifyForStart(ctx, ex, opt.start)
			if err != nil {
				ex.startErr = err
				if aerr := add(lineage.TypeInterrupt, g.cfg.Enforcer, lineage.InterruptBody{Reason: "grant_invalid", Detail: err.Error()}); aerr != nil {
					return nil, aerr
				}
			} else if err := add(lineage.TypeStart, g.cfg.Enforcer, body); err != nil {
				return nil, err
			}
		}
	}
	if err := g.append(ctx, ex, events, entries); err != nil {
		span.End("ledger_failed", err)
		return nil, err
	}
	ex.task = nil
	if ex.Token == "" && ex.Decision.Decision != policy.RequireApproval {
		span.End(ex.Decision.Decision, nil) // nothing will run
	}
	return ex, nil
}

// Record appends one event of the execution (start, end, interrupt, …) and
// returns once it is durable.
func (ex *Execution) Record(ctx context.Context, typ string, body any) error {
	return ex.recordAs(ctx, typ, ex.g.cfg.Enforcer, body)
}

// Authorize verifies the execution's grant as the enforcer must before it
// starts anything: signature, type, algorithm, time, audience, the action
// digest recomputed from what is about to run, and single use.
func (ex *Execution) Authorize(ctx context.Context, recomputedDigest string) error {
	if ex.Token == "" {
		return fmt.Errorf("gateway: execution %s has no grant (decision %s)", ex.ID, ex.Decision.Decision)
	}
	_, err := ex.g.verifier.Verify(ctx, ex.Token, grant.Expect{Audience: ex.g.cfg.Enforcer, ADG: recomputedDigest})
	return err
}

// append writes events durably to the ledger, and the index rows that find
// them in the same transaction: one commit, one fsync, and the index can
// never disagree with the ledger. The task state the events change is
// written in the same transaction (task.go).
func (g *Gateway) append(ctx context.Context, ex *Execution, events []*lineage.Event, entries [][]byte) error {
	for _, e := range events {
		if ex.task == nil && endAddsLabels(ex, e) {
			// A label change is a change of the task's state: it takes the
			// task's lock, so no decision of the task is made on the state
			// from before it and appended after it.
			unlock := g.taskLocks.lock(ex.Action.Task.ID)
			defer unlock()
			break
		}
	}
	when := g.now()
	started := ex.started
	// The entries are the chain's fresh envelopes, written once and never
	// modified: the ledger takes them without a copy.
	_, err := g.log.AppendOwned(ctx, func(ctx context.Context, tx ledger.AppendTx, first uint64) error {
		x, ok := tx.(ledger.SQLExecer)
		if !ok {
			return errors.New("gateway: the ledger's storage cannot hold the index")
		}
		if ex.use != nil {
			if err := consumeJTI(ctx, x, ex.use); err != nil {
				return err
			}
		}
		if err := g.writeIndex(ctx, x, ex, events, first); err != nil {
			return err
		}
		for _, e := range events {
			switch e.Type {
			case lineage.TypeDecision:
				if ex.task != nil {
					if err := writeTaskDecision(ctx, x, ex, ex.task, when); err != nil {
						return err
					}
				}
			case lineage.TypeGrant:
				if err := writeGrantLinks(ctx, x, ex); err != nil {
					return err
				}
				for _, sl := range ex.approvedUse {
					if _, err := x.ExecContext(ctx, `INSERT OR IGNORE INTO etb_limit_usage(slot, execution, cost, unix_nano) VALUES(?,?,?,?)`,
						sl.Slot, ex.ID, sl.Cost, when.UnixNano()); err != nil {
						return fmt.Errorf("gateway: reserve %v of %s for approved %s: %w", sl.Cost, sl.Slot, ex.ID, err)
					}
				}
			case lineage.TypeEnd, lineage.TypeInterrupt:
				if err := writeTaskOutcome(ctx, x, ex, e, started); err != nil {
					return err
				}
			}
		}
		return nil
	}, entries)
	if err != nil {
		return fmt.Errorf("gateway: ledger append for execution %s: %w", ex.ID, err)
	}
	ex.use = nil
	for _, e := range events {
		switch e.Type {
		case lineage.TypeStart:
			ex.started = true
		case lineage.TypeEnd, lineage.TypeInterrupt:
			ex.span.End(outcomeOf(e), nil)
		}
	}
	return nil
}

// queryRow runs a query of the decision path through the statement cache.
func (g *Gateway) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return pooled{g}.QueryRowContext(ctx, query, args...)
}

// pooled is a ledger.Querier on the connection pool, through the
// statement cache.
type pooled struct{ g *Gateway }

func (p pooled) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := p.g.stmts.Get(ctx, query)
	if err != nil {
		return p.g.db.QueryRowContext(ctx, query, args...) // reports the same error
	}
	return st.QueryRowContext(ctx, args...)
}

func (p pooled) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := p.g.stmts.Get(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// Summary is one execution as `etb log` shows it.
type Summary struct {
	ID, Time, Agent, Kind, Name, Args, Decision, Rules, Outcome, Task string
}

func summarize(a action.Action) string {
	args, _ := json.Marshal(a.Action.Args)
	s := string(args)
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// outcomeOf maps an event to the outcome shown by `etb log`.
func outcomeOf(e *lineage.Event) string {
	switch e.Type {
	case lineage.TypeStart:
		return "running"
	case lineage.TypeEnd:
		var b lineage.EndBody
		if json.Unmarshal(e.Body, &b) == nil {
			if b.Signal != "" {
				return "signal " + b.Signal
			}
			return fmt.Sprintf("exit %d", b.ExitCode)
		}
	case lineage.TypeInterrupt:
		var b lineage.InterruptBody
		if json.Unmarshal(e.Body, &b) == nil {
			return "interrupted: " + b.Reason
		}
	}
	return ""
}
