package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite" // also registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"
)

// OpenSQLite opens (creating if needed) the SQLite database file at path with
// the settings every etb table relies on, applied to every pooled connection:
// journal_mode=WAL, synchronous=FULL (a commit is on disk when it returns),
// busy_timeout=10s (writers in other processes are waited for, not failed),
// foreign_keys=ON and temp_store=MEMORY. The *sql.DB is generic: other
// packages may create their own tables on it.
func OpenSQLite(ctx context.Context, path string) (*sql.DB, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("ledger: sqlite path %q is empty or contains '?' or '#'", path)
	}
	// _txlock=immediate: every BeginTx is BEGIN IMMEDIATE, which takes the
	// write lock at once (an append must not discover a concurrent writer
	// halfway through its transaction).
	dsn := "file:" + path +
		"?_txlock=immediate" +
		"&_pragma=busy_timeout(10000)" +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(1)" +
		// A multi-row INSERT inside a transaction keeps a statement
		// journal; on disk that is two write syscalls per page it
		// touches. In memory it is the same rollback, without the I/O.
		"&_pragma=temp_store(MEMORY)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("ledger: open sqlite %q: %w", path, err)
	}
	// Keep connections for concurrent readers: database/sql's default of 2
	// idle connections makes a busy server open and close SQLite
	// connections (and re-run the pragmas) on most queries.
	db.SetMaxIdleConns(16)
	// The first connection runs the pragmas. While another process
	// creates the file, or its last connection checkpoints and removes the
	// WAL on close, that can fail with SQLITE_BUSY before the busy handler
	// is in force: a moment's condition, tried again for up to about five
	// seconds.
	var mode string
	for wait := 10 * time.Millisecond; ; wait *= 2 {
		err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode)
		if err == nil {
			break
		}
		if !isBusy(err) || wait > 2*time.Second {
			db.Close()
			return nil, fmt.Errorf("ledger: open sqlite %q: %w", path, err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			db.Close()
			return nil, fmt.Errorf("ledger: open sqlite %q: %w", path, ctx.Err())
		}
	}
	if !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("ledger: sqlite %q is in journal mode %q, want wal", path, mode)
	}
	return db, nil
}

// isBusy reports whether err is SQLite's SQLITE_BUSY (5) or one of its
// extended codes.
func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS ledger_entries (
	idx   INTEGER PRIMARY KEY CHECK (idx >= 0),
	count INTEGER NOT NULL CHECK (count >= 1),
	data  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_tiles (
	level  INTEGER NOT NULL CHECK (level >= 0 AND level <= 63),
	idx    INTEGER NOT NULL CHECK (idx >= 0),
	width  INTEGER NOT NULL CHECK (width >= 1 AND width <= 256),
	hashes BLOB NOT NULL CHECK (length(hashes) = 32 * width),
	PRIMARY KEY (level, idx, width)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
	size INTEGER PRIMARY KEY CHECK (size >= 0),
	note BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS ledger_entries_immutable BEFORE UPDATE ON ledger_entries
	BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_undeletable BEFORE DELETE ON ledger_entries
	BEGIN SELECT RAISE(ABORT, 'ledger entries are undeletable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_tiles_immutable BEFORE UPDATE ON ledger_tiles
	BEGIN SELECT RAISE(ABORT, 'ledger tiles are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_tiles_undeletable BEFORE DELETE ON ledger_tiles
	BEGIN SELECT RAISE(ABORT, 'ledger tiles are undeletable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_immutable BEFORE UPDATE ON ledger_checkpoints
	BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_undeletable BEFORE DELETE ON ledger_checkpoints
	BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are undeletable'); END;
`

// SQLiteStorage is the Storage of a log in the tables ledger_entries,
// ledger_tiles and ledger_checkpoints of a SQLite database opened with
// OpenSQLite. An entry row holds the entries of one append batch: idx is
// the index of its first entry, count their number, and data the entries
// in the tlog-tiles entry bundle encoding (big-endian uint16 length,
// bytes). Primary keys refuse a second row at an index, and triggers refuse
// UPDATE and DELETE. (INSERT OR REPLACE is not guarded: a per-row trigger
// for it cost about 10% of append throughput; the sequencer never issues
// it. A replaced edge tile or latest checkpoint is caught by the next
// append's check, which reads the border back whenever another SQLite
// connection has written (sqliteTx.Undisturbed); a replaced entry by
// ProveEntry, which verifies what it serves; and any replaced row by
// Fsck.)
type SQLiteStorage struct {
	db    *sql.DB
	stmts *Statements

	// appendMu is held from BeginAppend until that transaction ends:
	// every append transaction runs on conn, one at a time, so that
	// PRAGMA data_version, which counts commits by other connections,
	// tells whether anyone else wrote in between (sqliteTx.Undisturbed).
	appendMu sync.Mutex
	conn     *sql.Conn // nil before the first append, after Close, or after conn failed
	version  int64     // data_version seen at conn's previous BeginAppend, if seen
	seen     bool
	// entryRow is the buffer the entry row of each append is encoded in,
	// reused (up to maxKeptEntryRow): SQLite copies a bound blob, so it is
	// free once the INSERT returns.
	entryRow []byte
	closed   bool
	// committed counts the append transactions committed (see
	// sqliteTx.Committed).
	committed uint64
	// warm are the statements ReadWarm prepared on conn, by query.
	warm map[string]*sql.Stmt
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
	return &SQLiteStorage{db: db, stmts: NewStatements(db)}, nil
}

// Statements caches prepared statements of one database by query text.
// database/sql prepares each on every connection that runs it, once, and
// keeps it there: a busy append path parses no SQL. It is safe for
// concurrent use; the statements live as long as the database.
type Statements struct {
	db *sql.DB
	m  sync.Map // query → *sql.Stmt
}

// NewStatements returns an empty cache for db.
func NewStatements(db *sql.DB) *Statements { return &Statements{db: db} }

// Get returns the prepared statement of query, preparing it on first use.
func (s *Statements) Get(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.m.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.m.LoadOrStore(query, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
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

// Entries implements Storage.
func (s *SQLiteStorage) Entries(ctx context.Context, from, to uint64) ([][]byte, error) {
	if from > to {
		return nil, fmt.Errorf("ledger: entries [%d, %d): from exceeds to", from, to)
	}
	if _, err := toInt64(to, "entry index"); err != nil {
		return nil, err
	}
	out := make([][]byte, 0, min(to-from, 1024))
	if from == to {
		return out, nil
	}
	next := from // next index wanted
	err := scanEntryRows(ctx, s.db, from, func(idx, count uint64, data []byte) error {
		if idx > next {
			return fmt.Errorf("ledger: read entries [%d, %d): entry %d: %w", from, to, next, ErrNotFound)
		}
		if next == from && idx+count <= from {
			return nil // the row before from; from is in a later row or missing
		}
		if next != from && idx != next {
			return fmt.Errorf("ledger: read entries [%d, %d): entry row at %d (%d entries) overlaps the row before", from, to, idx, count)
		}
		es, err := decodeEntryRow(idx, count, data)
		if err != nil {
			return err
		}
		for i := next - idx; i < count && next < to; i++ {
			out = append(out, es[i])
			next++
		}
		if next == to {
			return errStopScan
		}
		return nil
	})
	if err != nil && err != errStopScan {
		return nil, err
	}
	if next != to {
		return nil, fmt.Errorf("ledger: read entries [%d, %d): entry %d: %w", from, to, next, ErrNotFound)
	}
	return out, nil
}

// errStopScan ends an entry row scan early; it is never returned.
var errStopScan = errors.New("ledger: stop scan")

// scanEntryRows calls fn for each entry row that holds an index >= from (the
// last row starting at or before from, and every row after it), in order.
func scanEntryRows(ctx context.Context, q Querier, from uint64, fn func(idx, count uint64, data []byte) error) error {
	f, err := toInt64(from, "entry index")
	if err != nil {
		return err
	}
	return scan(ctx, q, "entries", func(r *sql.Rows) error {
		var idx, count int64
		var data []byte
		if err := r.Scan(&idx, &count, &data); err != nil {
			return err
		}
		if idx < 0 || count < 1 {
			return fmt.Errorf("ledger: entry row at %d has count %d", idx, count)
		}
		return fn(uint64(idx), uint64(count), data)
	}, `SELECT idx, count, data FROM ledger_entries
		WHERE idx >= (SELECT COALESCE(MAX(idx), 0) FROM ledger_entries WHERE idx <= ?)
		ORDER BY idx`, f)
}

// maxKeptEntryRow is the largest entry row buffer an SQLiteStorage keeps
// for the next append; a larger batch's is left to the collector.
const maxKeptEntryRow = 1 << 20

// encodeEntryRow encodes entries as one row's data: each entry as a
// big-endian uint16 length and its bytes (the tlog-tiles entry bundle
// encoding).
func encodeEntryRow(entries [][]byte) ([]byte, error) {
	return appendEntryRow(nil, entries)
}

// appendEntryRow appends encodeEntryRow(entries) to out.
func appendEntryRow(out []byte, entries [][]byte) ([]byte, error) {
	n := len(out)
	for _, e := range entries {
		n += 2 + len(e)
	}
	out = slices.Grow(out, n-len(out))
	for i, e := range entries {
		if len(e) == 0 || len(e) > MaxEntrySize {
			return nil, fmt.Errorf("ledger: entry %d of the row is %d bytes, want 1..%d", i, len(e), MaxEntrySize)
		}
		out = append(out, byte(len(e)>>8), byte(len(e)))
		out = append(out, e...)
	}
	return out, nil
}

// decodeEntryRow decodes the data of the entry row at idx, which must hold
// exactly count entries of 1..MaxEntrySize bytes and nothing else.
func decodeEntryRow(idx, count uint64, data []byte) ([][]byte, error) {
	out := make([][]byte, 0, min(count, MaxBatchEntries))
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, fmt.Errorf("ledger: entry row at %d is malformed: truncated length of entry %d", idx, idx+uint64(len(out)))
		}
		n := int(data[0])<<8 | int(data[1])
		if n == 0 || len(data)-2 < n {
			return nil, fmt.Errorf("ledger: entry row at %d is malformed: entry %d has length %d with %d bytes left", idx, idx+uint64(len(out)), n, len(data)-2)
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	if uint64(len(out)) != count {
		return nil, fmt.Errorf("ledger: entry row at %d is malformed: %d entries, its count says %d", idx, len(out), count)
	}
	return out, nil
}

// Tiles implements Storage.
func (s *SQLiteStorage) Tiles(ctx context.Context, ids []TileID) ([][]byte, error) {
	return readTiles(ctx, s.db, ids)
}

// readTiles reads the widest stored row of each tile, one indexed query per
// tile (a descending scan of the primary key that stops at the first row).
func readTiles(ctx context.Context, q Querier, ids []TileID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		idx, err := toInt64(id.Index, "tile index")
		if err != nil {
			return nil, err
		}
		var h []byte
		err = q.QueryRowContext(ctx, "SELECT hashes FROM ledger_tiles WHERE level = ? AND idx = ? ORDER BY width DESC LIMIT 1", int64(id.Level), idx).Scan(&h)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("ledger: tile %d/%d: %w", id.Level, id.Index, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("ledger: read tile %d/%d: %w", id.Level, id.Index, err)
		}
		if len(h) == 0 || len(h)%HashSize != 0 || len(h) > TileWidth*HashSize {
			return nil, fmt.Errorf("ledger: tile %d/%d is %d bytes, not 1..%d hashes", id.Level, id.Index, len(h), TileWidth)
		}
		out[i] = h
	}
	return out, nil
}

// CheckpointCovering implements Storage.
func (s *SQLiteStorage) CheckpointCovering(ctx context.Context, index uint64) (uint64, []byte, error) {
	i, err := toInt64(index, "entry index")
	if err != nil {
		return 0, nil, err
	}
	var size int64
	var n []byte
	err = s.db.QueryRowContext(ctx, "SELECT size, note FROM ledger_checkpoints WHERE size > ? ORDER BY size LIMIT 1", i).Scan(&size, &n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, fmt.Errorf("ledger: checkpoint covering index %d: %w", index, ErrNotFound)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("ledger: checkpoint covering index %d: %w", index, err)
	}
	return uint64(size), n, nil
}

// ScanEntries implements Storage. A malformed entry row is an error.
func (s *SQLiteStorage) ScanEntries(ctx context.Context, from uint64, fn func(uint64, []byte) error) error {
	return scanEntryRows(ctx, s.db, from, func(idx, count uint64, data []byte) error {
		es, err := decodeEntryRow(idx, count, data)
		if err != nil {
			return err
		}
		for i, e := range es {
			if idx+uint64(i) >= from {
				if err := fn(idx+uint64(i), e); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// ScanTiles implements Storage.
func (s *SQLiteStorage) ScanTiles(ctx context.Context, fn func(Tile) error) error {
	return scan(ctx, s.db, "tiles", func(r *sql.Rows) error {
		var level, idx, width int64
		var h []byte
		if err := r.Scan(&level, &idx, &width, &h); err != nil {
			return err
		}
		if level < 0 || level > MaxLevel || idx < 0 || width < 1 || width > TileWidth || len(h) != int(width)*HashSize {
			return fmt.Errorf("ledger: tile row (level %d, index %d, width %d) with %d bytes of hashes is malformed", level, idx, width, len(h))
		}
		return fn(Tile{TileID: TileID{Level: uint8(level), Index: uint64(idx)}, Hashes: h})
	}, "SELECT level, idx, width, hashes FROM ledger_tiles ORDER BY level, idx, width")
}

// ScanCheckpoints implements Storage.
func (s *SQLiteStorage) ScanCheckpoints(ctx context.Context, fn func(uint64, []byte) error) error {
	return scan(ctx, s.db, "checkpoints", func(r *sql.Rows) error {
		var size int64
		var n []byte
		if err := r.Scan(&size, &n); err != nil {
			return err
		}
		return fn(uint64(size), n)
	}, "SELECT size, note FROM ledger_checkpoints ORDER BY size")
}

// scan runs query and calls row for each result row until it fails.
func scan(ctx context.Context, q Querier, what string, row func(*sql.Rows) error, query string, args ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("ledger: scan %s: %w", what, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := row(rows); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: scan %s: %w", what, err)
	}
	return nil
}

// LatestCheckpoint implements Storage.
func (s *SQLiteStorage) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	return latestCheckpoint(ctx, s.db)
}

func latestCheckpoint(ctx context.Context, q Querier) (uint64, []byte, error) {
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

// BeginAppend implements Storage. It begins a transaction with BEGIN
// IMMEDIATE (the DSN's _txlock), which takes SQLite's write lock (waiting
// up to the busy timeout for writers in other connections or processes).
// Append transactions of one SQLiteStorage run one at a time on one
// connection it keeps for them (Close releases it): a second BeginAppend
// waits until the first transaction ends.
func (s *SQLiteStorage) BeginAppend(ctx context.Context) (AppendTx, error) {
	s.appendMu.Lock()
	tx, undisturbed, err := s.beginLocked(ctx)
	if err != nil {
		s.appendMu.Unlock()
		return nil, fmt.Errorf("ledger: begin append: %w", err)
	}
	return &sqliteTx{tx: tx, stmts: s.stmts, s: s, undisturbed: undisturbed, committed: s.committed}, nil
}

// beginLocked begins the transaction on the append connection, taking a
// fresh one from the pool if there is none or the kept one fails, and reads
// data_version. The caller holds s.appendMu.
func (s *SQLiteStorage) beginLocked(ctx context.Context) (*sql.Tx, bool, error) {
	if s.closed {
		return nil, false, errors.New("storage closed")
	}
	for attempt := 0; ; attempt++ {
		if s.conn == nil {
			conn, err := s.db.Conn(ctx)
			if err != nil {
				return nil, false, err
			}
			s.conn, s.seen = conn, false
		}
		// Run without ctx's end, BEGIN IMMEDIATE waits for other
		// writers up to the busy timeout (10 s), and the driver starts
		// no goroutine to watch the context, for it and for every
		// statement of the transaction (under the write lock they wait
		// for nothing but the disk).
		tx, err := s.conn.BeginTx(context.WithoutCancel(ctx), nil)
		if err != nil {
			// A busy database (another writer past the busy timeout) is
			// an error of the moment; a broken connection is replaced,
			// once.
			if !errors.Is(err, sql.ErrConnDone) && !errors.Is(err, driver.ErrBadConn) {
				return nil, false, err
			}
			s.dropConnLocked()
			if attempt == 1 || ctx.Err() != nil {
				return nil, false, err
			}
			continue
		}
		var v int64
		if err := s.dataVersion(context.WithoutCancel(ctx), tx).Scan(&v); err != nil {
			_ = tx.Rollback()
			s.dropConnLocked() // its state is unknown: not trusted again
			return nil, false, err
		}
		// Under the write lock: no commit can come between this read and
		// this transaction's end but its own.
		undisturbed := s.seen && v == s.version
		s.version, s.seen = v, true
		return tx, undisturbed, nil
	}
}

// dataVersion reads PRAGMA data_version in tx through the statement
// cache: the pragma is evaluated when the statement runs, not when it is
// prepared.
func (s *SQLiteStorage) dataVersion(ctx context.Context, tx *sql.Tx) *sql.Row {
	st, err := s.stmts.Get(ctx, "PRAGMA data_version")
	if err != nil {
		return tx.QueryRowContext(ctx, "PRAGMA data_version") // reports the same error
	}
	return tx.StmtContext(ctx, st).QueryRowContext(ctx)
}

// Querier runs read queries: *sql.DB and *sql.Conn are Queriers.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ReadWarm runs fn with a Querier on the connection the append
// transactions run on, if none is in progress; otherwise it reports false
// without running fn, and the caller reads through the pool instead. The
// answers are the same: every commit is visible to every connection. What
// differs is the cost: after a commit, a pooled connection's next read
// transaction drops its whole page cache and reads each page again (SQLite
// does so whenever another connection has changed the WAL), while the
// appending connection still holds the pages it just wrote. fn must only
// read, must close what it opens, and must be quick: appends wait for it.
func (s *SQLiteStorage) ReadWarm(ctx context.Context, fn func(Querier) error) (bool, error) {
	if !s.appendMu.TryLock() {
		return false, nil
	}
	defer s.appendMu.Unlock()
	if s.closed || s.conn == nil {
		return false, nil
	}
	return true, fn(warmConn{s})
}

// warmConn is ReadWarm's Querier: statements prepared on s.conn once
// (database/sql offers no statement cache for a Conn). The caller holds
// s.appendMu.
type warmConn struct{ s *SQLiteStorage }

func (w warmConn) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := w.s.warm[query]; ok {
		return st, nil
	}
	st, err := w.s.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if w.s.warm == nil {
		w.s.warm = map[string]*sql.Stmt{}
	}
	w.s.warm[query] = st
	return st, nil
}

func (w warmConn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := w.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func (w warmConn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := w.stmt(ctx, query)
	if err != nil {
		return w.s.conn.QueryRowContext(ctx, query, args...) // reports the same error
	}
	return st.QueryRowContext(ctx, args...)
}

func (s *SQLiteStorage) dropConnLocked() {
	for _, st := range s.warm {
		_ = st.Close()
	}
	s.warm = nil
	if s.conn != nil {
		_ = s.conn.Raw(func(any) error { return driver.ErrBadConn })
		_ = s.conn.Close()
	}
	s.conn, s.seen = nil, false
}

// Close releases the connection append transactions run on, waiting for
// one in progress to end. Appends after Close fail. It does not close the
// database.
func (s *SQLiteStorage) Close() error {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.closed = true
	for _, st := range s.warm {
		_ = st.Close()
	}
	s.warm = nil
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn, s.seen = nil, false
	return err
}

type sqliteTx struct {
	mu    sync.Mutex
	tx    *sql.Tx // nil once ended
	stmts *Statements
	// s is the storage whose appendMu this transaction holds until it
	// ends (release).
	s *SQLiteStorage
	// undisturbed: no other connection or process committed to the
	// database since the previous append transaction of s began.
	undisturbed bool
	committed   uint64 // the storage's append commits before this one
	// pending are the rows AddRow deferred, by table and columns, in the
	// order those were first used.
	pending []*pendingRows
}

// pendingRows are rows for one table and column list.
type pendingRows struct {
	table, columns string
	n              int // values per row
	rows           [][]any
}

// AddRow implements RowWriter.
func (t *sqliteTx) AddRow(table, columns string, values ...any) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.live(); err != nil {
		return err
	}
	if len(values) == 0 || strings.Count(columns, ",")+1 != len(values) {
		return fmt.Errorf("ledger: row for %s(%s) has %d values", table, columns, len(values))
	}
	for _, p := range t.pending {
		if p.table == table && p.columns == columns {
			p.rows = append(p.rows, values)
			return nil
		}
	}
	t.pending = append(t.pending, &pendingRows{table: table, columns: columns, n: len(values), rows: [][]any{values}})
	return nil
}

// flush inserts the pending rows. The caller holds t.mu.
func (t *sqliteTx) flush(ctx context.Context, c *sql.Tx) error {
	pending := t.pending
	t.pending = nil
	for _, p := range pending {
		if err := t.insertRows(ctx, c, p.table, p.columns, p.n, p.rows); err != nil {
			return fmt.Errorf("ledger: insert %d rows into %s: %w", len(p.rows), p.table, err)
		}
	}
	return nil
}

func (t *sqliteTx) live() (*sql.Tx, error) {
	if t.tx == nil {
		return nil, errors.New("ledger: append transaction already ended")
	}
	return t.tx, nil
}

// exec runs query in the transaction through the statement cache.
func (t *sqliteTx) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	st, err := t.stmts.Get(ctx, query)
	if err != nil {
		return nil, err
	}
	return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

// ExecContext runs a statement of a sidecar (see Log.AppendWith) inside the
// append transaction. Statements are prepared once per connection.
func (t *sqliteTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return nil, err
	}
	if err := t.flush(ctx, c); err != nil {
		return nil, err
	}
	return t.exec(ctx, c, query, args...)
}

func (t *sqliteTx) EntryCount(ctx context.Context) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return 0, err
	}
	var idx, count int64
	err = cachedTx{t, c}.QueryRowContext(ctx, "SELECT idx, count FROM ledger_entries ORDER BY idx DESC LIMIT 1").Scan(&idx, &count)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ledger: entry count: %w", err)
	}
	if idx < 0 || count < 1 || idx > math.MaxInt64-count {
		return 0, fmt.Errorf("ledger: last entry row at %d has count %d", idx, count)
	}
	return uint64(idx + count), nil
}

func (t *sqliteTx) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return 0, nil, err
	}
	return latestCheckpoint(ctx, cachedTx{t, c})
}

func (t *sqliteTx) Tiles(ctx context.Context, ids []TileID) ([][]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return nil, err
	}
	return readTiles(ctx, cachedTx{t, c}, ids)
}

// cachedTx runs the queries of an append transaction through the
// statement cache (a Querier).
type cachedTx struct {
	t *sqliteTx
	c *sql.Tx
}

func (q cachedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := q.t.stmts.Get(ctx, query)
	if err != nil {
		return nil, err
	}
	return q.c.StmtContext(ctx, st).QueryContext(ctx, args...)
}

func (q cachedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := q.t.stmts.Get(ctx, query)
	if err != nil {
		return q.c.QueryRowContext(ctx, query, args...) // reports the same error
	}
	return q.c.StmtContext(ctx, st).QueryRowContext(ctx, args...)
}

// insertRows inserts rows of n columns with multi-row INSERT statements,
// through the statement cache: chunks of a power of two rows up to 256, so
// few distinct statements are ever prepared (nine per table and columns),
// and up to 511 rows take one statement per set bit of their count (14
// rows: 8, 4 and 2, where chunks of 256, 64, 16, 4 and 1 took five).
func (t *sqliteTx) insertRows(ctx context.Context, c *sql.Tx, table, cols string, n int, rows [][]any) error {
	ph := "(" + strings.TrimSuffix(strings.Repeat("?,", n), ",") + ")"
	for start := 0; start < len(rows); {
		size := 1
		for _, s := range []int{256, 128, 64, 32, 16, 8, 4, 2} {
			if len(rows)-start >= s && s*n <= 32000 {
				size = s
				break
			}
		}
		part := rows[start : start+size]
		start += size
		q := "INSERT INTO " + table + " (" + cols + ") VALUES " + strings.TrimSuffix(strings.Repeat(ph+",", len(part)), ",")
		args := make([]any, 0, n*len(part))
		for _, r := range part {
			args = append(args, r...)
		}
		if _, err := t.exec(ctx, c, q, args...); err != nil {
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
	if len(entries) == 0 {
		return errors.New("ledger: write of no entries")
	}
	data, err := appendEntryRow(t.s.entryRow[:0], entries)
	if err != nil {
		return err
	}
	if cap(data) <= maxKeptEntryRow {
		t.s.entryRow = data
	}
	if _, err := t.exec(ctx, c, "INSERT INTO ledger_entries (idx, count, data) VALUES (?, ?, ?)", int64(first), int64(len(entries)), data); err != nil {
		return fmt.Errorf("ledger: write entries [%d, %d): %w", first, first+uint64(len(entries)), err)
	}
	return nil
}

func (t *sqliteTx) WriteTiles(ctx context.Context, tiles []Tile) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return err
	}
	rows := make([][]any, len(tiles))
	for i, tl := range tiles {
		idx, err := toInt64(tl.Index, "tile index")
		if err != nil {
			return err
		}
		w := tl.Width()
		if tl.Level > MaxLevel || w < 1 || w > TileWidth || len(tl.Hashes) != w*HashSize {
			return fmt.Errorf("ledger: write tile %d/%d: %d bytes is not 1..%d hashes", tl.Level, tl.Index, len(tl.Hashes), TileWidth)
		}
		rows[i] = []any{int64(tl.Level), idx, int64(w), tl.Hashes}
	}
	if err := t.insertRows(ctx, c, "ledger_tiles", "level, idx, width, hashes", 4, rows); err != nil {
		return fmt.Errorf("ledger: write %d tiles: %w", len(tiles), err)
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
	if _, err := t.exec(ctx, c, "INSERT INTO ledger_checkpoints (size, note) VALUES (?, ?)", sz, n); err != nil {
		return fmt.Errorf("ledger: write checkpoint at size %d: %w", size, err)
	}
	return nil
}

// Undisturbed reports whether no other connection or process has committed
// to the database since the previous append transaction of this storage
// began (SQLite's PRAGMA data_version, read under the write lock). Only
// this storage's own append transactions have written in between, so what
// the log kept in memory of its last commit is what is stored. False when
// it cannot tell (the first transaction, a new connection).
func (t *sqliteTx) Undisturbed() bool { return t.undisturbed }

// Committed is the number of append transactions the storage committed
// before this one began: a Log that made the last of them, in an
// undisturbed transaction, knows what is stored.
func (t *sqliteTx) Committed() uint64 { return t.committed }

// release lets the next append transaction of the storage begin. The
// caller holds t.mu and has just ended t.tx.
func (t *sqliteTx) release(failed bool) {
	if t.s == nil {
		return
	}
	if failed {
		// Whether it committed is unknown: let the next begin decide
		// nothing from data_version.
		t.s.dropConnLocked()
	}
	t.s.appendMu.Unlock()
	t.s = nil
}

func (t *sqliteTx) Commit() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.live()
	if err != nil {
		return err
	}
	t.tx = nil
	if err := t.flush(context.Background(), c); err != nil {
		c.Rollback()
		t.release(true)
		return err
	}
	if err := c.Commit(); err != nil {
		// database/sql has rolled back or discarded the connection.
		t.release(true)
		return fmt.Errorf("ledger: commit: %w", err)
	}
	if t.s != nil {
		t.s.committed++ // appendMu is still held
	}
	t.release(false)
	return nil
}

func (t *sqliteTx) Rollback() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tx == nil {
		return nil
	}
	c := t.tx
	t.tx = nil
	if err := c.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		t.release(true)
		return fmt.Errorf("ledger: rollback: %w", err)
	}
	t.release(false)
	return nil
}
