package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// OpenSQLite opens (creating if needed) the SQLite database file at path with
// the settings every etb table relies on, applied to every pooled connection:
// journal_mode=WAL, synchronous=FULL (a commit is on disk when it returns),
// busy_timeout=10s (writers in other processes are waited for, not failed)
// and foreign_keys=ON. The *sql.DB is generic: other packages may create
// their own tables on it.
func OpenSQLite(ctx context.Context, path string) (*sql.DB, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("ledger: sqlite path %q is empty or contains '?' or '#'", path)
	}
	dsn := "file:" + path +
		"?_pragma=busy_timeout(10000)" +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("ledger: open sqlite %q: %w", path, err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("ledger: open sqlite %q: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("ledger: sqlite %q is in journal mode %q, want wal", path, mode)
	}
	return db, nil
}

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS ledger_entries (
	idx  INTEGER PRIMARY KEY CHECK (idx >= 0),
	data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_nodes (
	level INTEGER NOT NULL CHECK (level >= 0 AND level < 64),
	idx   INTEGER NOT NULL CHECK (idx >= 0),
	hash  BLOB NOT NULL CHECK (length(hash) = 32),
	PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
	size INTEGER PRIMARY KEY CHECK (size >= 0),
	note BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS ledger_entries_immutable BEFORE UPDATE ON ledger_entries
	BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_undeletable BEFORE DELETE ON ledger_entries
	BEGIN SELECT RAISE(ABORT, 'ledger entries are undeletable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_nodes_immutable BEFORE UPDATE ON ledger_nodes
	BEGIN SELECT RAISE(ABORT, 'ledger nodes are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_nodes_undeletable BEFORE DELETE ON ledger_nodes
	BEGIN SELECT RAISE(ABORT, 'ledger nodes are undeletable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_immutable BEFORE UPDATE ON ledger_checkpoints
	BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_undeletable BEFORE DELETE ON ledger_checkpoints
	BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are undeletable'); END;
`

// SQLiteStorage is the Storage of a log in the tables ledger_entries,
// ledger_nodes and ledger_checkpoints of a SQLite database opened with
// OpenSQLite. Primary keys refuse a second row at an index, and triggers
// refuse UPDATE and DELETE. (INSERT OR REPLACE is not guarded: a per-row
// trigger for it cost about 10% of append throughput; the sequencer never
// issues it, and a replaced row is caught by the next append's border check
// and by every verifier.)
type SQLiteStorage struct {
	db *sql.DB
}

// NewSQLiteStorage creates the ledger tables in db if they do not exist.
func NewSQLiteStorage(ctx context.Context, db *sql.DB) (*SQLiteStorage, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("ledger: sqlite schema: %w", err)
	}
	defer conn.Close()
	// Take the write lock first so that concurrent openers do not race.
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return nil, fmt.Errorf("ledger: sqlite schema: %w", err)
	}
	if _, err := conn.ExecContext(ctx, sqliteSchema); err != nil {
		rollbackConn(conn)
		return nil, fmt.Errorf("ledger: sqlite schema: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		rollbackConn(conn)
		return nil, fmt.Errorf("ledger: sqlite schema: %w", err)
	}
	return &SQLiteStorage{db: db}, nil
}

// rollbackConn ends any open transaction on conn; if that fails the
// connection is discarded from the pool so no half-open transaction leaks.
func rollbackConn(conn *sql.Conn) {
	if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil && !strings.Contains(err.Error(), "no transaction is active") {
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

func toInt64(v uint64, what string) (int64, error) {
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("ledger: %s %d exceeds the sqlite integer range", what, v)
	}
	return int64(v), nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Entries implements Storage.
func (s *SQLiteStorage) Entries(ctx context.Context, from, to uint64) ([][]byte, error) {
	if from > to {
		return nil, fmt.Errorf("ledger: entries [%d, %d): from exceeds to", from, to)
	}
	f, err := toInt64(from, "entry index")
	if err != nil {
		return nil, err
	}
	t, err := toInt64(to, "entry index")
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, "SELECT idx, data FROM ledger_entries WHERE idx >= ? AND idx < ? ORDER BY idx", f, t)
	if err != nil {
		return nil, fmt.Errorf("ledger: read entries [%d, %d): %w", from, to, err)
	}
	defer rows.Close()
	out := make([][]byte, 0, min(to-from, 1024))
	for rows.Next() {
		var idx int64
		var data []byte
		if err := rows.Scan(&idx, &data); err != nil {
			return nil, fmt.Errorf("ledger: read entries [%d, %d): %w", from, to, err)
		}
		if want := from + uint64(len(out)); uint64(idx) != want {
			return nil, fmt.Errorf("ledger: read entries [%d, %d): entry %d: %w", from, to, want, ErrNotFound)
		}
		out = append(out, data)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ledger: read entries [%d, %d): %w", from, to, err)
	}
	if uint64(len(out)) != to-from {
		return nil, fmt.Errorf("ledger: read entries [%d, %d): entry %d: %w", from, to, from+uint64(len(out)), ErrNotFound)
	}
	return out, nil
}

// Nodes implements Storage.
func (s *SQLiteStorage) Nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error) {
	return readNodes(ctx, s.db, ids)
}

// readNodes reads node hashes with one query per batch of up to 128 ids.
func readNodes(ctx context.Context, q querier, ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	pos := make(map[compact.NodeID]int, len(ids))
	for i, id := range ids {
		pos[id] = i
	}
	const chunk = 128
	for start := 0; start < len(ids); start += chunk {
		part := ids[start:min(start+chunk, len(ids))]
		var sb strings.Builder
		args := make([]any, 0, 2*len(part))
		sb.WriteString("SELECT level, idx, hash FROM ledger_nodes WHERE ")
		for i, id := range part {
			if i > 0 {
				sb.WriteString(" OR ")
			}
			sb.WriteString("(level = ? AND idx = ?)")
			idx, err := toInt64(id.Index, "node index")
			if err != nil {
				return nil, err
			}
			args = append(args, int64(id.Level), idx)
		}
		rows, err := q.QueryContext(ctx, sb.String(), args...)
		if err != nil {
			return nil, fmt.Errorf("ledger: read nodes: %w", err)
		}
		for rows.Next() {
			var level, idx int64
			var hash []byte
			if err := rows.Scan(&level, &idx, &hash); err != nil {
				rows.Close()
				return nil, fmt.Errorf("ledger: read nodes: %w", err)
			}
			i, ok := pos[compact.NewNodeID(uint(level), uint64(idx))]
			if !ok {
				continue
			}
			out[i] = hash
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("ledger: read nodes: %w", err)
		}
	}
	for i, h := range out {
		if h == nil {
			// A duplicated id is filled only at its last position; copy.
			if j := pos[ids[i]]; out[j] != nil {
				out[i] = out[j]
				continue
			}
			return nil, fmt.Errorf("ledger: node (level %d, index %d): %w", ids[i].Level, ids[i].Index, ErrNotFound)
		}
	}
	return out, nil
}

// LatestCheckpoint implements Storage.
func (s *SQLiteStorage) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	return latestCheckpoint(ctx, s.db)
}

func latestCheckpoint(ctx context.Context, q querier) (uint64, []byte, error) {
	var size int64
	var n []byte
	err := q.QueryRowContext(ctx, "SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1").Scan(&size, &n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, fmt.Errorf("ledger: latest checkpoint: %w", ErrNotFound)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("ledger: latest checkpoint: %w", err)
	}
	return uint64(size), n, nil
}

// CheckpointAt implements Storage.
func (s *SQLiteStorage) CheckpointAt(ctx context.Context, size uint64) ([]byte, error) {
	sz, err := toInt64(size, "checkpoint size")
	if err != nil {
		return nil, err
	}
	var n []byte
	err = s.db.QueryRowContext(ctx, "SELECT note FROM ledger_checkpoints WHERE size = ?", sz).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("ledger: checkpoint at size %d: %w", size, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoint at size %d: %w", size, err)
	}
	return n, nil
}

// BeginAppend implements Storage. It pins one pooled connection and runs
// BEGIN IMMEDIATE on it, which takes SQLite's write lock (waiting up to the
// busy timeout for writers in other connections or processes).
func (s *SQLiteStorage) BeginAppend(ctx context.Context) (AppendTx, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("ledger: begin append: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		rollbackConn(conn)
		conn.Close()
		return nil, fmt.Errorf("ledger: begin append: %w", err)
	}
	return &sqliteTx{conn: conn}, nil
}

type sqliteTx struct {
	mu   sync.Mutex
	conn *sql.Conn // nil once ended
}

func (t *sqliteTx) live() (*sql.Conn, error) {
	if t.conn == nil {
		return nil, errors.New("ledger: append transaction already ended")
	}
	return t.conn, nil
}

func (t *sqliteTx) EntryCount(ctx context.Context) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return 0, err
	}
	var n sql.NullInt64
	if err := c.QueryRowContext(ctx, "SELECT MAX(idx) FROM ledger_entries").Scan(&n); err != nil {
		return 0, fmt.Errorf("ledger: entry count: %w", err)
	}
	if !n.Valid {
		return 0, nil
	}
	return uint64(n.Int64) + 1, nil
}

func (t *sqliteTx) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return 0, nil, err
	}
	return latestCheckpoint(ctx, c)
}

func (t *sqliteTx) Nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return nil, err
	}
	return readNodes(ctx, c, ids)
}

// insertRows inserts rows of n columns with multi-row INSERT statements.
func insertRows(ctx context.Context, c *sql.Conn, table, cols string, n int, rows [][]any) error {
	const perStmt = 200
	var stmt *sql.Stmt
	stmtRows := 0
	defer func() {
		if stmt != nil {
			stmt.Close()
		}
	}()
	ph := "(" + strings.TrimSuffix(strings.Repeat("?,", n), ",") + ")"
	for start := 0; start < len(rows); start += perStmt {
		part := rows[start:min(start+perStmt, len(rows))]
		if stmt == nil || stmtRows != len(part) {
			if stmt != nil {
				stmt.Close()
			}
			q := "INSERT INTO " + table + " (" + cols + ") VALUES " + strings.TrimSuffix(strings.Repeat(ph+",", len(part)), ",")
			var err error
			if stmt, err = c.PrepareContext(ctx, q); err != nil {
				return err
			}
			stmtRows = len(part)
		}
		args := make([]any, 0, n*len(part))
		for _, r := range part {
			args = append(args, r...)
		}
		if _, err := stmt.ExecContext(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func (t *sqliteTx) WriteEntries(ctx context.Context, first uint64, entries [][]byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return err
	}
	if _, err := toInt64(first+uint64(len(entries)), "entry index"); err != nil {
		return err
	}
	rows := make([][]any, len(entries))
	for i, e := range entries {
		rows[i] = []any{int64(first) + int64(i), e}
	}
	if err := insertRows(ctx, c, "ledger_entries", "idx, data", 2, rows); err != nil {
		return fmt.Errorf("ledger: write entries [%d, %d): %w", first, first+uint64(len(entries)), err)
	}
	return nil
}

func (t *sqliteTx) WriteNodes(ctx context.Context, ids []compact.NodeID, hashes [][]byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return err
	}
	if len(ids) != len(hashes) {
		return fmt.Errorf("ledger: write nodes: %d ids but %d hashes", len(ids), len(hashes))
	}
	rows := make([][]any, len(ids))
	for i, id := range ids {
		idx, err := toInt64(id.Index, "node index")
		if err != nil {
			return err
		}
		rows[i] = []any{int64(id.Level), idx, hashes[i]}
	}
	if err := insertRows(ctx, c, "ledger_nodes", "level, idx, hash", 3, rows); err != nil {
		return fmt.Errorf("ledger: write %d nodes: %w", len(ids), err)
	}
	return nil
}

func (t *sqliteTx) WriteCheckpoint(ctx context.Context, size uint64, n []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return err
	}
	sz, err := toInt64(size, "checkpoint size")
	if err != nil {
		return err
	}
	if _, err := c.ExecContext(ctx, "INSERT INTO ledger_checkpoints (size, note) VALUES (?, ?)", sz, n); err != nil {
		return fmt.Errorf("ledger: write checkpoint at size %d: %w", size, err)
	}
	return nil
}

func (t *sqliteTx) Commit() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return err
	}
	t.conn = nil
	defer c.Close()
	if _, err := c.ExecContext(context.Background(), "COMMIT"); err != nil {
		rollbackConn(c)
		return fmt.Errorf("ledger: commit: %w", err)
	}
	return nil
}

func (t *sqliteTx) Rollback() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conn == nil {
		return nil
	}
	c := t.conn
	t.conn = nil
	defer c.Close()
	if _, err := c.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		_ = c.Raw(func(any) error { return driver.ErrBadConn })
		return fmt.Errorf("ledger: rollback: %w", err)
	}
	return nil
}
