package grant

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ReplayRetention is how long after its exp a used jti is kept. It exceeds
// MaxSkew, the longest a Verifier accepts a grant past its exp, so a jti is
// never forgotten while its grant could still verify (on a clock shared by
// store and verifier).
const ReplayRetention = MaxSkew + time.Minute

// pruneEvery is how often Use opportunistically deletes forgotten jtis.
const pruneEvery = time.Minute

// SQLiteReplayStore is a ReplayStore in the table grant_jti of a SQL
// database (written for modernc.org/sqlite, driver "sqlite"). The
// insert-if-absent is a single statement, so concurrent Use calls on the
// same jti, from one process or several sharing the file, let exactly one
// succeed. Durability is the database's: open it with synchronous=FULL.
type SQLiteReplayStore struct {
	db  *sql.DB
	now func() time.Time

	mu        sync.Mutex
	lastPrune time.Time
}

// NewSQLiteReplayStore creates the table grant_jti(jti TEXT PRIMARY KEY,
// exp INTEGER) in db if it does not exist and returns a store using it. The
// caller keeps ownership of db.
func NewSQLiteReplayStore(ctx context.Context, db *sql.DB) (*SQLiteReplayStore, error) {
	if db == nil {
		return nil, errors.New("grant: replay store: nil database")
	}
	const schema = `CREATE TABLE IF NOT EXISTS grant_jti (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grant_jti_exp ON grant_jti (exp);`
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("grant: replay store: create table grant_jti: %w", err)
	}
	return &SQLiteReplayStore{db: db, now: time.Now}, nil
}

// Use records jti with expiry exp. It returns an error wrapping ErrReplayed
// if jti is already recorded, and a storage error (never nil) if the
// database fails. About once a minute it first deletes jtis whose exp is
// more than ReplayRetention in the past.
func (s *SQLiteReplayStore) Use(ctx context.Context, jti string, exp time.Time) error {
	if jti == "" {
		return fmt.Errorf("grant: replay store: empty jti")
	}
	if err := s.maybePrune(ctx); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx,
		`INSERT INTO grant_jti (jti, exp) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING`, jti, exp.Unix())
	if err != nil {
		return fmt.Errorf("grant: replay store: record jti %s: %w", jti, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("grant: replay store: record jti %s: %w", jti, err)
	}
	if n != 1 {
		return fmt.Errorf("%w: jti %s was used before", ErrReplayed, jti)
	}
	return nil
}

// Prune deletes the jtis whose exp is before before and returns how many.
// Deleting a jti whose grant can still verify would allow its replay:
// callers pass a time at least ReplayRetention in the past.
func (s *SQLiteReplayStore) Prune(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM grant_jti WHERE exp < ?`, before.Unix())
	if err != nil {
		return 0, fmt.Errorf("grant: replay store: prune before %s: %w", fmtTime(before), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("grant: replay store: prune before %s: %w", fmtTime(before), err)
	}
	return n, nil
}

func (s *SQLiteReplayStore) maybePrune(ctx context.Context) error {
	now := s.now()
	s.mu.Lock()
	due := now.Sub(s.lastPrune) >= pruneEvery
	if due {
		s.lastPrune = now
	}
	s.mu.Unlock()
	if !due {
		return nil
	}
	_, err := s.Prune(ctx, now.Add(-ReplayRetention))
	return err
}
