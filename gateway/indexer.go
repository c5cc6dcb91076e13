package gateway

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// indexer writes index rows for many concurrent callers in one transaction,
// the way the ledger's sequencer group-commits entries: one goroutine takes
// every queued job, runs them in one transaction, commits once and answers
// each caller. Without it every decision would pay its own synced commit,
// serialized behind SQLite's single writer.
type indexer struct {
	db    *sql.DB
	jobs  chan indexJob
	done  chan struct{}
	close chan struct{}
}

type indexJob struct {
	ctx   context.Context
	write func(context.Context, *sql.Tx) error
	reply chan error
}

// maxIndexBatch bounds the jobs of one transaction.
const maxIndexBatch = 1024

func newIndexer(db *sql.DB) *indexer {
	ix := &indexer{db: db, jobs: make(chan indexJob, maxIndexBatch), done: make(chan struct{}), close: make(chan struct{})}
	go ix.loop()
	return ix
}

var errIndexClosed = errors.New("gateway: index writer is closed")

// do runs write inside a shared transaction and returns once it committed.
// If the transaction fails, every job in it gets the error (and is rolled
// back); a job's own error fails only the batch it is in.
func (ix *indexer) do(ctx context.Context, write func(context.Context, *sql.Tx) error) error {
	j := indexJob{ctx: ctx, write: write, reply: make(chan error, 1)}
	select {
	case ix.jobs <- j:
	case <-ix.close:
		return errIndexClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-j.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (ix *indexer) loop() {
	defer close(ix.done)
	for {
		var batch []indexJob
		select {
		case j := <-ix.jobs:
			batch = append(batch, j)
		case <-ix.close:
			for {
				select {
				case j := <-ix.jobs:
					j.reply <- errIndexClosed
				default:
					return
				}
			}
		}
	drain:
		for len(batch) < maxIndexBatch {
			select {
			case j := <-ix.jobs:
				batch = append(batch, j)
			default:
				break drain
			}
		}
		err := ix.commit(batch)
		for _, j := range batch {
			j.reply <- err
		}
	}
}

func (ix *indexer) commit(batch []indexJob) error {
	ctx := context.Background()
	tx, err := ix.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("gateway: index: %w", err)
	}
	defer tx.Rollback()
	for _, j := range batch {
		if err := j.ctx.Err(); err != nil {
			continue // the caller has gone; its rows are not written
		}
		if err := j.write(ctx, tx); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("gateway: index commit: %w", err)
	}
	return nil
}

func (ix *indexer) Close() {
	close(ix.close)
	<-ix.done
}
