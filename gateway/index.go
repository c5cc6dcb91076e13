package gateway

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// The index tables find executions and their events in the ledger, and keep
// what the evidence bundle needs beside the ledger (grant tokens, policy
// sources). They are not the record: every fact in them is checked against
// the ledger when evidence is built and again by the verifier.
const indexSchema = `
CREATE TABLE IF NOT EXISTS etb_executions(
	id TEXT PRIMARY KEY, time TEXT NOT NULL, agent TEXT NOT NULL, task TEXT NOT NULL,
	kind TEXT NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,
	decision TEXT NOT NULL DEFAULT '', rules TEXT NOT NULL DEFAULT '', outcome TEXT NOT NULL DEFAULT '');
-- Executions are listed newest first in the order their intents entered the
-- ledger, which is rowid order: an index on time would put one more row in
-- every decision's commit; homes made before lose it here.
DROP INDEX IF EXISTS etb_executions_time;
-- The random end of an id (lineage.ShortID prints it) finds executions
-- (ResolveID), through an index built lazily, off the decision path (see
-- indexTails): etb_id_tails holds the tails of the executions up to rowid
-- etb_id_tails_done.upto; the rest are a short rowid range to scan. An index
-- on the tail in etb_executions itself put a random page in every commit,
-- one per decision (docs/PERFORMANCE.md); homes made before lose it here.
DROP INDEX IF EXISTS etb_executions_tail;
-- The open executions (permitted, not yet ended) are the candidates of
-- every revocation and of the sweep of permits left by an earlier run. A
-- home holds millions of executions and few open ones: without this index
-- each revocation scanned them all, and took longer the older the home
-- (docs/PERFORMANCE.md). An entry is added at the right edge of the index
-- by the commit of a permit, and removed when the execution ends.
CREATE INDEX IF NOT EXISTS etb_executions_open ON etb_executions(decision)
	WHERE decision IN ('permit', 'require_approval') AND outcome IN ('', 'running');
CREATE TABLE IF NOT EXISTS etb_id_tails(tail TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY(tail, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS etb_id_tails_done(one INTEGER PRIMARY KEY CHECK(one = 1), upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS etb_events(
	execution TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, type TEXT NOT NULL,
	PRIMARY KEY(execution, seq));
CREATE TABLE IF NOT EXISTS etb_grants(jti TEXT PRIMARY KEY, execution TEXT NOT NULL, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS etb_policies(hash TEXT PRIMARY KEY, source BLOB NOT NULL);
`

func (g *Gateway) createIndex(ctx context.Context) error {
	if _, err := g.db.ExecContext(ctx, indexSchema); err != nil {
		return fmt.Errorf("gateway: create index tables: %w", err)
	}
	return nil
}

func (g *Gateway) rememberPolicy(ctx context.Context, b *policy.Bundle) error {
	_, err := g.db.ExecContext(ctx, `INSERT OR IGNORE INTO etb_policies(hash, source) VALUES(?, ?)`, b.Hash(), b.Source())
	if err != nil {
		return fmt.Errorf("gateway: store policy %s: %w", b.Hash(), err)
	}
	return nil
}

// PolicySource returns the source of a policy bundle this home has used.
func (g *Gateway) PolicySource(ctx context.Context, hash string) ([]byte, error) {
	var src []byte
	err := g.db.QueryRowContext(ctx, `SELECT source FROM etb_policies WHERE hash = ?`, hash).Scan(&src)
	if err != nil {
		return nil, fmt.Errorf("gateway: policy %s: %w", hash, err)
	}
	return src, nil
}

// writeIndex writes the index rows of events, the first at ledger index
// first, inside the ledger's append transaction (see Gateway.append).
func (g *Gateway) writeIndex(ctx context.Context, tx ledger.SQLExecer, ex *Execution, events []*lineage.Event, first uint64) error {
	outcome, inserted := "", false
	for _, e := range events {
		if o := outcomeOf(e); o != "" {
			outcome = o
		}
	}
	var args []any
	for i, e := range events {
		switch e.Type {
		case lineage.TypeIntent:
			// The intent's batch also holds the decision (Begin appends
			// them together), and may hold the start: one row with all.
			a := ex.Action
			if err := insertRow(ctx, tx, "etb_executions", "id, time, agent, task, kind, name, args, decision, rules, outcome",
				ex.ID, a.Time, a.Principal.ID, a.Task.ID, a.Action.Kind, a.Action.Name, summarize(a),
				ex.Decision.Decision, strings.Join(ex.Decision.Rules, ","), outcome); err != nil {
				return fmt.Errorf("gateway: index execution %s: %w", ex.ID, err)
			}
			inserted = true
		case lineage.TypeDecision:
			if i == 0 { // a decision recorded on its own (a re-decision)
				if _, err := tx.ExecContext(ctx, `UPDATE etb_executions SET decision = ?, rules = ? WHERE id = ?`,
					ex.Decision.Decision, strings.Join(ex.Decision.Rules, ","), ex.ID); err != nil {
					return fmt.Errorf("gateway: index decision of %s: %w", ex.ID, err)
				}
			}
		case lineage.TypeGrant:
			if err := insertRow(ctx, tx, "etb_grants", "jti, execution, token", ex.Claims.ID, ex.ID, ex.Token); err != nil {
				return fmt.Errorf("gateway: index grant of %s: %w", ex.ID, err)
			}
		}
		args = append(args, e.Execution, e.Seq, first+uint64(i), e.Type)
	}
	if outcome != "" && !inserted {
		if _, err := tx.ExecContext(ctx, `UPDATE etb_executions SET outcome = ? WHERE id = ?`, outcome, ex.ID); err != nil {
			return fmt.Errorf("gateway: index outcome of %s: %w", ex.ID, err)
		}
	}
	for i := 0; i < len(args); i += 4 {
		if err := insertRow(ctx, tx, "etb_events", "execution, seq, idx, type", args[i:i+4]...); err != nil {
			return fmt.Errorf("gateway: index events of %s: %w", ex.ID, err)
		}
	}
	return nil
}

// insertRow inserts one row in the ledger's append transaction: deferred
// into the batch's multi-row INSERT when the storage can (ledger.RowWriter),
// one statement otherwise.
func insertRow(ctx context.Context, tx ledger.SQLExecer, table, columns string, values ...any) error {
	if rw, ok := tx.(ledger.RowWriter); ok {
		return rw.AddRow(table, columns, values...)
	}
	q := "INSERT INTO " + table + "(" + columns + ") VALUES(" + strings.TrimSuffix(strings.Repeat("?,", len(values)), ",") + ")"
	_, err := tx.ExecContext(ctx, q, values...)
	return err
}

// List returns the most recent executions, newest first: in the reverse of
// the order their intents entered the ledger.
func (g *Gateway) List(ctx context.Context, limit int) ([]Summary, error) {
	rows, err := g.db.QueryContext(ctx, `SELECT id, time, agent, kind, name, args, decision, rules, outcome, task
		FROM etb_executions ORDER BY rowid DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("gateway: list executions: %w", err)
	}
	defer rows.Close()
	var out []Summary
	for rows.Next() {
		var s Summary
		if err := rows.Scan(&s.ID, &s.Time, &s.Agent, &s.Kind, &s.Name, &s.Args, &s.Decision, &s.Rules, &s.Outcome, &s.Task); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// ResolveID expands an execution id given in part to the full id: the id
// itself, a unique prefix, or a unique start of its last 12 characters
// (what `etb log` prints, lineage.ShortID).
func (g *Gateway) ResolveID(ctx context.Context, part string) (string, error) {
	if part == "" {
		return "", errors.New("gateway: empty execution id")
	}
	var n int
	if err := g.db.QueryRowContext(ctx, `SELECT count(*) FROM etb_executions WHERE id = ?`, part).Scan(&n); err != nil {
		return "", err
	} else if n == 1 {
		return part, nil
	}
	if len(part) <= 12 {
		g.indexTails(ctx)
	}
	// Both lookups are range scans of an index: the primary key, and the
	// tail index with the executions it does not cover yet (tailMatch).
	// char(1114111), U+10FFFF, sorts after every character that can
	// follow the part.
	rows, err := g.db.QueryContext(ctx, `
		SELECT id FROM etb_executions WHERE id >= ?1 AND id < ?1 || char(1114111)
		UNION
		SELECT id FROM (`+tailMatch+`) WHERE length(?1) <= 12
		LIMIT 3`, part)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return "", err
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("gateway: no execution %q", part)
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("gateway: execution id %q is ambiguous: more than one execution's id begins or ends with it; give more of it", part)
}

// tailMatch selects the ids of the executions whose id's last 12
// characters (lineage.ShortID) begin with ?1: those etb_id_tails covers,
// by a range of its key, and those after its mark, by a range of rowids
// (executions are inserted by one writer at a time and never deleted, so
// a new row's rowid is above every committed one, and every row at or
// below the mark was indexed). NOT
// INDEXED keeps the planner from scanning a covering index instead of
// searching the rowid range.
const tailMatch = `
	SELECT id FROM etb_id_tails WHERE tail >= ?1 AND tail < ?1 || char(1114111)
	UNION
	SELECT id FROM etb_executions NOT INDEXED
		WHERE rowid > (SELECT coalesce(max(upto), 0) FROM etb_id_tails_done)
		AND substr(id, 21) >= ?1 AND substr(id, 21) < ?1 || char(1114111)`

// tailChunk is how many executions one transaction of indexTails indexes:
// it holds the write lock, which decisions wait for, so it is kept short.
const tailChunk = 2000

// indexTails brings etb_id_tails up to the latest execution, in
// transactions of tailChunk executions. The decision path never writes
// it: a lookup by short id does, before it looks (ResolveID,
// ResolveTask), so that the rows it scans stay few. It is best effort: a
// home opened read-only, or busy, is looked up all the same (tailMatch
// scans what is not indexed), only slower.
func (g *Gateway) indexTails(ctx context.Context) {
	for {
		n, err := g.indexTailChunk(ctx)
		if err != nil || n < tailChunk {
			return
		}
	}
}

// indexTailChunk indexes the tails of up to tailChunk executions after the
// mark, moves the mark past them and reports how many it indexed.
func (g *Gateway) indexTailChunk(ctx context.Context) (int64, error) {
	tx, err := g.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: the mark is read under the write lock
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var upto int64
	var hi sql.NullInt64
	var n int64
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(upto), 0) FROM etb_id_tails_done`).Scan(&upto); err != nil {
		return 0, err
	}
	if err := tx.QueryRowContext(ctx, `SELECT max(rowid), count(*) FROM (
		SELECT rowid FROM etb_executions WHERE rowid > ? ORDER BY rowid LIMIT ?)`, upto, tailChunk).Scan(&hi, &n); err != nil {
		return 0, err
	}
	if !hi.Valid {
		return 0, nil
	}
	// Inserted in key order: each leaf of the index is written once per
	// chunk, however many of the chunk's tails land in it.
	if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO etb_id_tails(tail, id)
		SELECT substr(id, 21), id FROM etb_executions WHERE rowid > ? AND rowid <= ? ORDER BY 1, 2`, upto, hi.Int64); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO etb_id_tails_done(one, upto) VALUES(1, ?)`, hi.Int64); err != nil {
		return 0, err
	}
	return n, tx.Commit()
}

// Events returns an execution's events from the ledger in order, with
// their ledger indices. Every entry is parsed and the chain is checked.
func (g *Gateway) Events(ctx context.Context, id string) ([]*lineage.Event, []uint64, error) {
	rows, err := g.db.QueryContext(ctx, `SELECT idx FROM etb_events WHERE execution = ? ORDER BY seq`, id)
	if err != nil {
		return nil, nil, err
	}
	var idx []uint64
	for rows.Next() {
		var i int64
		if err := rows.Scan(&i); err != nil {
			rows.Close()
			return nil, nil, err
		}
		idx = append(idx, uint64(i))
	}
	rows.Close()
	if len(idx) == 0 {
		return nil, nil, fmt.Errorf("gateway: no events for execution %q", id)
	}
	events := make([]*lineage.Event, len(idx))
	for i, x := range idx {
		b, err := g.log.Entry(ctx, x)
		if err != nil {
			return nil, nil, err
		}
		e, err := lineage.Parse(b)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: ledger entry %d: %w", x, err)
		}
		if e.Execution != id {
			return nil, nil, fmt.Errorf("gateway: index says entry %d belongs to %s, the ledger says %s", x, id, e.Execution)
		}
		events[i] = e
	}
	if err := lineage.VerifyChain(events); err != nil {
		return nil, nil, err
	}
	return events, idx, nil
}

// Token returns the grant token issued under jti.
func (g *Gateway) Token(ctx context.Context, jti string) (string, error) {
	var tok string
	err := g.db.QueryRowContext(ctx, `SELECT token FROM etb_grants WHERE jti = ?`, jti).Scan(&tok)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("gateway: no grant %s", jti)
	}
	return tok, err
}
