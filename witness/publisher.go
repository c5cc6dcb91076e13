package witness

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

const publishedSchema = `
CREATE TABLE IF NOT EXISTS witness_published (
	size INTEGER PRIMARY KEY CHECK (size >= 0),
	note BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS witness_published_immutable BEFORE UPDATE ON witness_published
	BEGIN SELECT RAISE(ABORT, 'published checkpoints are immutable'); END;
CREATE TRIGGER IF NOT EXISTS witness_published_undeletable BEFORE DELETE ON witness_published
	BEGIN SELECT RAISE(ABORT, 'published checkpoints are undeletable'); END;
`

// maxConflictRetries bounds the 409 resyncs of one witness in one round.
const maxConflictRetries = 3

// Defaults of a Publisher: how long the witnesses that have not answered get
// once the quorum has, and how long one round of Run may take.
const (
	defaultQuorumGrace  = 500 * time.Millisecond
	defaultRoundTimeout = 30 * time.Second
)

// Publisher gathers witness cosignatures for the checkpoints of one log. A
// checkpoint counts as published only once quorum witnesses cosigned it; the
// cosigned note is then stored in the table witness_published of the log's
// database. The log never waits for the Publisher: witnesses being down only
// delays publication, and the next round publishes the then-latest
// checkpoint, which covers every entry appended meanwhile.
type Publisher struct {
	db           *sql.DB
	log          *ledger.Log
	quorum       int
	quorumGrace  time.Duration
	roundTimeout time.Duration

	mu        sync.Mutex // serializes rounds; guards witnesses[i].seen
	witnesses []*remote
}

// remote is one witness as the Publisher sees it.
type remote struct {
	client   Client
	verifier note.Verifier
	seen     uint64 // the size the witness is believed to have cosigned last
}

// NewPublisher returns a Publisher for log, storing published checkpoints in
// db (the log's database). witnesses[i] is verified with verifiers[i] (see
// NewCosignatureVerifier); quorum must be 1..len(witnesses).
func NewPublisher(ctx context.Context, db *sql.DB, log *ledger.Log, witnesses []Client, quorum int, verifiers []note.Verifier) (*Publisher, error) {
	if db == nil || log == nil {
		return nil, errors.New("witness: NewPublisher needs a database and a log")
	}
	if len(witnesses) != len(verifiers) {
		return nil, fmt.Errorf("witness: %d witnesses but %d verifiers", len(witnesses), len(verifiers))
	}
	if err := checkWitnessSet(nil, verifiers, quorum); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, publishedSchema); err != nil {
		return nil, fmt.Errorf("witness: create table witness_published: %w", err)
	}
	p := &Publisher{db: db, log: log, quorum: quorum, quorumGrace: defaultQuorumGrace, roundTimeout: defaultRoundTimeout}
	// Witnesses that cosigned the last published checkpoint have that size;
	// a wrong guess costs one 409 and a resync.
	_, size, err := p.Latest(ctx)
	if err != nil && !errors.Is(err, ledger.ErrNotFound) {
		return nil, err
	}
	for i, c := range witnesses {
		if c.URL == "" {
			return nil, fmt.Errorf("witness: witness %d has no URL", i)
		}
		p.witnesses = append(p.witnesses, &remote{client: c, verifier: verifiers[i], seen: size})
	}
	return p, nil
}

// Latest returns the latest published (quorum-cosigned) checkpoint note and
// its size, or an error wrapping ledger.ErrNotFound if none is.
func (p *Publisher) Latest(ctx context.Context) (note []byte, size uint64, err error) {
	var s int64
	err = p.db.QueryRowContext(ctx, "SELECT size, note FROM witness_published ORDER BY size DESC LIMIT 1").Scan(&s, &note)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, fmt.Errorf("witness: no published checkpoint: %w", ledger.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("witness: latest published checkpoint: %w", err)
	}
	if s < 0 {
		return nil, 0, fmt.Errorf("witness: published checkpoint has size %d", s)
	}
	return note, uint64(s), nil
}

// Publish runs one round: it submits the log's latest checkpoint to every
// witness (with a consistency proof from the size each witness has seen,
// resyncing on 409), verifies each cosignature, and if at least quorum
// verify, stores and returns the checkpoint whose Note carries the log
// signature and those cosignatures. Otherwise it returns an error wrapping
// ErrNoQuorum and every witness's failure; nothing is stored.
func (p *Publisher) Publish(ctx context.Context) (ledger.Checkpoint, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cp, err := p.log.Checkpoint(ctx)
	if err != nil {
		return ledger.Checkpoint{}, err
	}
	if n, err := p.published(ctx, cp); err == nil {
		cp.Note = n
		return cp, nil
	} else if !errors.Is(err, ledger.ErrNotFound) {
		return ledger.Checkpoint{}, err
	}

	lines, errs := p.collect(ctx, cp)
	cosigned := bytes.Clone(cp.Note)
	got := 0
	for _, l := range lines {
		if l != nil {
			cosigned = append(cosigned, l...)
			got++
		}
	}
	if got < p.quorum {
		return ledger.Checkpoint{}, fmt.Errorf("%w: checkpoint of %q at size %d got %d of %d required cosignatures: %w",
			ErrNoQuorum, cp.Origin, cp.Size, got, p.quorum, errors.Join(errs...))
	}
	if cp.Size > 1<<63-1 {
		return ledger.Checkpoint{}, fmt.Errorf("witness: checkpoint size %d exceeds the storable range", cp.Size)
	}
	if _, err := p.db.ExecContext(ctx, "INSERT INTO witness_published (size, note) VALUES (?, ?) ON CONFLICT (size) DO NOTHING",
		int64(cp.Size), cosigned); err != nil {
		return ledger.Checkpoint{}, fmt.Errorf("witness: store published checkpoint of size %d: %w", cp.Size, err)
	}
	cp.Note = cosigned
	return cp, nil
}

// collect asks every witness for its cosignature of cp, concurrently, and
// returns the verified lines (nil for a failed witness) and the errors. Once
// the quorum has answered, the others get quorumGrace more before they are
// cancelled, so a hanging witness delays publication by at most that.
func (p *Publisher) collect(ctx context.Context, cp ledger.Checkpoint) ([][]byte, []error) {
	type result struct {
		i    int
		line []byte
		err  error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, len(p.witnesses))
	for i, w := range p.witnesses {
		go func() {
			line, err := p.cosign(ctx, w, cp)
			results <- result{i, line, err}
		}()
	}
	lines := make([][]byte, len(p.witnesses))
	errs := make([]error, len(p.witnesses))
	var grace <-chan time.Time
	for got, pending := 0, len(p.witnesses); pending > 0; {
		select {
		case r := <-results:
			pending--
			lines[r.i], errs[r.i] = r.line, r.err
			if r.err == nil {
				if got++; got == p.quorum && pending > 0 {
					grace = time.After(p.quorumGrace)
				}
			}
		case <-grace:
			cancel()
			grace = nil
		}
	}
	return lines, errs
}

// published returns the stored cosigned note of cp's size, after checking
// it carries cp's signed text.
func (p *Publisher) published(ctx context.Context, cp ledger.Checkpoint) ([]byte, error) {
	var n []byte
	err := p.db.QueryRowContext(ctx, "SELECT note FROM witness_published WHERE size = ?", int64(cp.Size)).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("witness: size %d not published: %w", cp.Size, ledger.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("witness: published checkpoint of size %d: %w", cp.Size, err)
	}
	if !bytes.HasPrefix(n, cp.Note) {
		return nil, fmt.Errorf("witness: published checkpoint of size %d does not extend the log's checkpoint note", cp.Size)
	}
	return n, nil
}

// cosign obtains w's cosignature of cp and returns its verified signature
// line.
func (p *Publisher) cosign(ctx context.Context, w *remote, cp ledger.Checkpoint) ([]byte, error) {
	for range maxConflictRetries {
		if w.seen > cp.Size {
			return nil, fmt.Errorf("witness %s has cosigned size %d, beyond checkpoint size %d", w.client.URL, w.seen, cp.Size)
		}
		var proof [][]byte
		if w.seen > 0 {
			var err error
			if proof, err = p.log.ConsistencyProof(ctx, w.seen, cp.Size); err != nil {
				return nil, err
			}
		}
		resp, err := w.client.AddCheckpoint(ctx, w.seen, proof, cp.Note)
		var conflict *ConflictError
		if errors.As(err, &conflict) {
			if conflict.Size == w.seen {
				// Same size, different root: the witness saw another tree.
				return nil, fmt.Errorf("witness %s holds a different checkpoint at size %d: %w", w.client.URL, cp.Size, err)
			}
			w.seen = conflict.Size
			continue
		}
		if err != nil {
			return nil, err
		}
		line, err := pickCosignature(cp.Note, resp, w.verifier)
		if err != nil {
			return nil, fmt.Errorf("witness %s: %w", w.client.URL, err)
		}
		w.seen = cp.Size
		return line, nil
	}
	return nil, fmt.Errorf("witness %s: still conflicting after %d resyncs", w.client.URL, maxConflictRetries)
}

// pickCosignature verifies the response lines against cpNote with v and
// returns v's signature line. Lines by other keys are dropped.
func pickCosignature(cpNote, lines []byte, v note.Verifier) ([]byte, error) {
	n, err := note.Open(append(bytes.Clone(cpNote), lines...), note.VerifierList(v))
	if err != nil {
		return nil, fmt.Errorf("cosignature by %s %08x: %w", v.Name(), v.KeyHash(), err)
	}
	for _, s := range n.Sigs {
		if s.Name == v.Name() && s.Hash == v.KeyHash() {
			return []byte("— " + s.Name + " " + s.Base64 + "\n"), nil
		}
	}
	return nil, fmt.Errorf("no cosignature by %s %08x", v.Name(), v.KeyHash())
}

// Run publishes until ctx ends: whenever the log's checkpoint is larger than
// the last published one it runs a round, retrying failed rounds with
// exponential backoff from every up to 64×every; one round takes at most
// 30 s. onErr, if not nil, is told of each failed round. Run returns ctx's
// error.
func (p *Publisher) Run(ctx context.Context, every time.Duration, onErr func(error)) error {
	if every <= 0 {
		return fmt.Errorf("witness: publish interval %v, want > 0", every)
	}
	wait := every
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, p.roundTimeout)
		err := p.round(rctx)
		cancel()
		switch {
		case err == nil:
			wait = every
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			if onErr != nil {
				onErr(err)
			}
			wait = min(2*wait, 64*every)
		}
		t.Reset(wait)
	}
}

// round publishes the latest checkpoint if it is not yet published.
func (p *Publisher) round(ctx context.Context) error {
	cp, err := p.log.Checkpoint(ctx)
	if err != nil {
		return err
	}
	_, size, err := p.Latest(ctx)
	if err == nil && size >= cp.Size {
		return nil
	}
	if err != nil && !errors.Is(err, ledger.ErrNotFound) {
		return err
	}
	_, err = p.Publish(ctx)
	return err
}
