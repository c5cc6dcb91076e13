package ledger

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Limits of entries and append batches.
const (
	MaxEntrySize    = 1<<16 - 1 // bytes of one entry (tlog-tiles entry bundles use uint16 lengths)
	MaxBatchEntries = 1024      // entries in one transaction (and one Append call)
	MaxBatchBytes   = 4 << 20   // entry bytes in one transaction (and one Append call)
	MaxReadEntries  = 1 << 16   // entries returned by one Entries call
)

// batchTimeout is the deadline of the context Storage.BeginAppend gets: it
// bounds the wait for the write lock (SQLiteStorage's wait is bounded by
// its busy timeout instead). The statements inside the transaction run
// under a context without it (see Log.open).
const batchTimeout = 30 * time.Second

// waitPoll is how often WaitCheckpoint re-reads the storage, for
// checkpoints committed by other Logs on the same storage.
const waitPoll = 20 * time.Millisecond

// batchLinger is the longest a batch smaller than the previous one waits for
// more requests before it is committed (see Log.sequence).
const batchLinger = 500 * time.Microsecond

// ErrClosed is returned by Append after Close, and to appends still queued
// when Close is called.
var ErrClosed = errors.New("ledger: log closed")

var hasher = rfc6962.DefaultHasher

// Log is an append-only Merkle log on a Storage. Its methods are safe for
// concurrent use. Several Logs (in one or several processes) may share one
// storage: every batch establishes the tree state under the storage write
// lock (see the package documentation, step 1).
type Log struct {
	st      Storage
	signer  note.Signer
	origin  string
	factory *compact.RangeFactory

	reqs chan *appendReq
	mu   sync.RWMutex // guards closed against sends on reqs
	shut bool
	quit chan struct{}
	done chan struct{}

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after every commit

	// pending is the checkpoint written in the open transaction (sequencer
	// goroutine only); latest is the last one this Log committed.
	pending *Checkpoint
	latest  atomic.Pointer[Checkpoint]
	// border is the right border of the tree as this Log last committed it
	// (sequencer goroutine only): the next append starts from it when the
	// store still ends where it left it (same size, same checkpoint), and
	// reads and re-checks the stored border otherwise.
	border *committedBorder

	batches atomic.Uint64
	entries atomic.Uint64
}

// committedBorder is the tree's right border after a commit.
type committedBorder struct {
	size   uint64
	note   []byte
	hashes [][]byte         // the compact range [0, size)
	edge   map[uint8][]byte // the partial tile of each level
	// commits is the storage's count of committed append transactions
	// once this one was (valid if counted; see undisturbedTx).
	commits uint64
	counted bool
}

type appendReq struct {
	ctx     context.Context
	side    Sidecar
	entries [][]byte
	size    int
	res     chan appendRes // buffered, capacity 1
}

type appendRes struct {
	first uint64
	err   error
}

// Stats counts what this Log committed since New.
type Stats struct {
	Batches uint64 // committed append transactions
	Entries uint64 // committed entries
}

// New returns a Log on st that signs checkpoints with signer, whose name must
// be origin. If st holds no checkpoint yet, New commits the signed checkpoint
// of the empty tree. It starts the sequencer goroutine; Close stops it.
func New(ctx context.Context, st Storage, signer note.Signer, origin string) (*Log, error) {
	if st == nil || signer == nil {
		return nil, errors.New("ledger: New needs a storage and a signer")
	}
	if err := checkOrigin(origin); err != nil {
		return nil, err
	}
	if signer.Name() != origin {
		return nil, fmt.Errorf("ledger: signer name %q does not match origin %q", signer.Name(), origin)
	}
	l := &Log{
		st:      st,
		signer:  signer,
		origin:  origin,
		factory: &compact.RangeFactory{Hash: hasher.HashChildren},
		reqs:    make(chan *appendReq, 4*MaxBatchEntries),
		quit:    make(chan struct{}),
		notify:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	if _, err := l.commit(ctx, nil); err != nil {
		return nil, err
	}
	go l.sequence()
	return l, nil
}

// Append adds entries to the log with contiguous indices and returns the
// index of the first. It returns nil only once the entries and a checkpoint
// covering them are committed and synced, in one transaction. Each entry
// must be 1..MaxEntrySize bytes and one call at most MaxBatchEntries entries
// and MaxBatchBytes bytes; otherwise nothing is written. If the storage
// fails, nothing of the batch is visible and every caller in it gets the
// error. If ctx ends while the batch is being committed, Append returns the
// context error and the entries may or may not have been committed.
func (l *Log) Append(ctx context.Context, entries ...[]byte) (uint64, error) {
	return l.AppendWith(ctx, nil, entries...)
}

// Sidecar writes rows that must commit atomically with an append (an index
// of the entries, say) inside the append's transaction, given the index of
// the request's first entry. It must only write through tx (for SQLite
// storage, tx implements SQLExecer) and must be quick: it runs while the
// write lock is held.
type Sidecar func(ctx context.Context, tx AppendTx, first uint64) error

// SQLExecer is implemented by the AppendTx of SQL storage, for sidecars.
type SQLExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// RowWriter is implemented by the AppendTx of SQL storage, for sidecars: a
// row added is inserted later in the same transaction, with the rows every
// sidecar of the batch added to the same table and columns, in multi-row
// INSERT statements (one per table instead of one per request: most of the
// cost of an index is per statement). Pending rows are inserted before any
// other statement of the transaction runs (so statements keep their order)
// and before it commits; an insert that fails fails the batch, like any
// sidecar error.
type RowWriter interface {
	AddRow(table, columns string, values ...any) error
}

// AppendWith is Append, running side (if non-nil) in the same transaction
// as the entries: both are durable together or not at all. If side fails,
// the whole batch it was grouped into fails and nothing of it is written.
func (l *Log) AppendWith(ctx context.Context, side Sidecar, entries ...[]byte) (uint64, error) {
	total, err := checkBatch(entries)
	if err != nil {
		return 0, err
	}
	// Copy so that a caller reusing its buffers cannot change a queued entry.
	own := make([][]byte, len(entries))
	for i, e := range entries {
		own[i] = bytes.Clone(e)
	}
	return l.submit(ctx, side, own, total)
}

// AppendOwned is AppendWith for a caller that hands entries over, the
// slice and its entries: they are not copied, and the caller must never
// modify them again, not even after an error (an append whose caller gave
// up may still be committed).
func (l *Log) AppendOwned(ctx context.Context, side Sidecar, entries [][]byte) (uint64, error) {
	total, err := checkBatch(entries)
	if err != nil {
		return 0, err
	}
	return l.submit(ctx, side, entries, total)
}

// checkBatch checks the limits of one append call and returns its bytes.
func checkBatch(entries [][]byte) (int, error) {
	if len(entries) == 0 {
		return 0, errors.New("ledger: append of no entries")
	}
	if len(entries) > MaxBatchEntries {
		return 0, fmt.Errorf("ledger: append of %d entries, limit %d per call", len(entries), MaxBatchEntries)
	}
	total := 0
	for i, e := range entries {
		if len(e) == 0 || len(e) > MaxEntrySize {
			return 0, fmt.Errorf("ledger: append entry %d is %d bytes, want 1..%d", i, len(e), MaxEntrySize)
		}
		total += len(e)
	}
	if total > MaxBatchBytes {
		return 0, fmt.Errorf("ledger: append of %d bytes, limit %d per call", total, MaxBatchBytes)
	}
	return total, nil
}

// submit queues an append request and waits for its outcome.
func (l *Log) submit(ctx context.Context, side Sidecar, entries [][]byte, total int) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("ledger: append: %w", err)
	}
	req := &appendReq{ctx: ctx, side: side, entries: entries, size: total, res: make(chan appendRes, 1)}

	l.mu.RLock()
	if l.shut {
		l.mu.RUnlock()
		return 0, ErrClosed
	}
	select {
	case l.reqs <- req:
		l.mu.RUnlock()
	case <-ctx.Done():
		l.mu.RUnlock()
		return 0, fmt.Errorf("ledger: append: %w", ctx.Err())
	}
	select {
	case r := <-req.res:
		return r.first, r.err
	case <-ctx.Done():
		return 0, fmt.Errorf("ledger: append (outcome unknown): %w", ctx.Err())
	}
}

// Close stops the sequencer after the batch in progress; appends still
// queued get ErrClosed. It does not close the storage.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.shut {
		l.mu.Unlock()
		<-l.done
		return nil
	}
	l.shut = true
	close(l.quit)
	l.mu.Unlock()
	<-l.done
	return nil
}

// Stats reports how many batches and entries this Log committed.
func (l *Log) Stats() Stats {
	return Stats{Batches: l.batches.Load(), Entries: l.entries.Load()}
}

// sequence is the single sequencer goroutine of a Log.
//
// Durability comes from group commit: every append waits for one storage
// transaction that writes its entries, the tiles they extend and a signed
// checkpoint, and syncs once. A sync costs about as much for one entry as
// for a hundred, so the sequencer puts every request queued by the time the
// transaction is ready to write into it, and throughput grows with load
// while an idle log still commits a lone append at once.
//
// The first request of a batch starts the transaction: opening it (taking
// the write lock, reading and verifying the committed state) takes a few
// hundred microseconds, during which callers answered by the previous batch
// re-queue. Only then is the batch closed. The lock is never held while the
// log is idle: a transaction is opened only for a waiting request.
//
// Callers woken by the previous batch re-queue one by one, so a batch closed
// too early would catch only the first of them and the next sync would carry
// a small batch. A batch of fewer requests than the previous one therefore
// lingers up to batchLinger for more; it never waits once it has as many
// requests as the last batch, so a serial caller sees no added latency.
// Requests are counted, not entries: a serial caller whose appends differ
// in size (four events, then one) must not wait for a second caller that
// does not exist.
func (l *Log) sequence() {
	defer close(l.done)
	var carry *appendReq
	last := 0 // requests in the previous batch
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var batch []*appendReq
		if carry != nil {
			batch, carry = append(batch, carry), nil
		} else {
			select {
			case r := <-l.reqs:
				batch = append(batch, r)
			case <-l.quit:
				l.failQueued()
				return
			}
		}
		lockCtx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		bt, openErr := l.open(lockCtx)
		ctx := context.WithoutCancel(lockCtx)
		n, size := len(batch[0].entries), batch[0].size
		var linger <-chan time.Time // non-nil once this batch lingers
	fill:
		for n < MaxBatchEntries {
			select {
			case r := <-l.reqs:
				if !l.add(&batch, &n, &size, &carry, r) {
					break fill
				}
				continue
			default:
			}
			if len(batch) >= last || openErr != nil {
				break
			}
			if linger == nil {
				timer.Reset(batchLinger)
				linger = timer.C
			}
			select {
			case r := <-l.reqs:
				if !l.add(&batch, &n, &size, &carry, r) {
					break fill
				}
			case <-linger:
				break fill
			}
		}
		timer.Stop() // Go >= 1.23: no stale tick can be received after Stop
		last = len(batch)
		l.commitBatch(ctx, batch, n, bt, openErr)
		cancel()
		select {
		case <-l.quit:
			if carry != nil {
				carry.res <- appendRes{err: ErrClosed}
			}
			l.failQueued()
			return
		default:
		}
	}
}

// add adds r to the batch unless that would exceed MaxBatchEntries or
// MaxBatchBytes; then r becomes the carry for the next batch and add
// reports false.
func (l *Log) add(batch *[]*appendReq, n, size *int, carry **appendReq, r *appendReq) bool {
	if *n+len(r.entries) > MaxBatchEntries || *size+r.size > MaxBatchBytes {
		*carry = r
		return false
	}
	*batch = append(*batch, r)
	*n += len(r.entries)
	*size += r.size
	return true
}

func (l *Log) failQueued() {
	for {
		select {
		case r := <-l.reqs:
			r.res <- appendRes{err: ErrClosed}
		default:
			return
		}
	}
}

// commitBatch commits the requests of batch (n entries in all) in the
// transaction opened for it (or fails them all with openErr) and answers
// every request.
func (l *Log) commitBatch(ctx context.Context, batch []*appendReq, n int, bt *batchTx, openErr error) {
	live := batch[:0]
	entries := make([][]byte, 0, n)
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.res <- appendRes{err: fmt.Errorf("ledger: append: %w", err)}
			continue
		}
		live = append(live, r)
		entries = append(entries, r.entries...)
	}
	if len(live) == 0 {
		if openErr == nil {
			_ = bt.tx.Rollback()
		}
		return
	}
	first, err := uint64(0), openErr
	if err == nil {
		var sides []func() error
		off := bt.count
		for _, r := range live {
			if r.side != nil {
				side, at := r.side, off
				sides = append(sides, func() error { return side(ctx, bt.tx, at) })
			}
			off += uint64(len(r.entries))
		}
		first, err = l.finish(ctx, bt, entries, sides)
	}
	for _, r := range live {
		if err != nil {
			r.res <- appendRes{err: err}
			continue
		}
		r.res <- appendRes{first: first}
		first += uint64(len(r.entries))
	}
}

// batchTx is an open append transaction whose committed state has been read
// and verified (step 1 of the package documentation).
type batchTx struct {
	tx    AppendTx
	count uint64           // committed entries = latest checkpoint size
	rng   *compact.Range   // compact range [0, count)
	edge  map[uint8][]byte // partial tile of each level at count
	empty bool             // no checkpoint committed yet
}

// commit appends entries in one exclusive storage transaction and returns
// the index of the first. With no entries it only makes sure a checkpoint
// exists (the empty tree's) and checks the store (New uses that).
func (l *Log) commit(ctx context.Context, entries [][]byte) (uint64, error) {
	bt, err := l.open(ctx)
	if err != nil {
		return 0, err
	}
	return l.finish(ctx, bt, entries, nil)
}

// open begins an append transaction and checks, under the write lock, that
// the stored entry count, the latest checkpoint and the stored edge tiles
// agree, so that a damaged store is refused rather than extended. On error
// the transaction is rolled back.
func (l *Log) open(ctx context.Context) (_ *batchTx, err error) {
	tx, err := l.st.BeginAppend(ctx)
	if err != nil {
		return nil, err
	}
	// Under the write lock a statement waits for nothing but the disk,
	// which no deadline interrupts; run without one, the SQLite driver
	// does not start a goroutine per statement to watch it.
	ctx = context.WithoutCancel(ctx)
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if b := l.border; b != nil && b.counted {
		if u, ok := tx.(undisturbedTx); ok && u.Undisturbed() && u.Committed() == b.commits {
			// The last append transaction committed to the store was
			// this Log's, and nobody else has written since (the write
			// lock is held): the stored count, checkpoint and edge
			// tiles are the ones it wrote, and reading them back is not
			// needed.
			if rng, err := l.factory.NewRange(0, b.size, append([][]byte(nil), b.hashes...)); err == nil {
				return &batchTx{tx: tx, count: b.size, rng: rng, edge: b.edge}, nil
			}
		}
	}
	count, err := tx.EntryCount(ctx)
	if err != nil {
		return nil, err
	}
	cpSize, cpNote, err := tx.LatestCheckpoint(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		if count != 0 {
			return nil, fmt.Errorf("ledger: store of %q has %d entries but no checkpoint", l.origin, count)
		}
		return &batchTx{tx: tx, rng: l.factory.NewEmptyRange(0), edge: map[uint8][]byte{}, empty: true}, nil
	case err != nil:
		return nil, err
	case cpSize != count:
		return nil, fmt.Errorf("ledger: store of %q has %d entries but its latest checkpoint has size %d", l.origin, count, cpSize)
	}
	if b := l.border; b != nil && b.size == count && bytes.Equal(b.note, cpNote) {
		// The store ends at the checkpoint this Log signed last (the write
		// lock is held): if its stored edge tiles are byte for byte the
		// ones this Log wrote, the border in memory is the one that
		// checkpoint commits to, and hashing it again is not needed. Any
		// difference takes the full path below, which re-derives the root
		// from what is stored and refuses a mismatch.
		if u, ok := tx.(undisturbedTx); ok && u.Undisturbed() {
			// Nobody else has written since this Log's last append
			// began, and the store ends at its checkpoint (another Log
			// on the same storage may have appended in between, which
			// the comparison above rules out): the stored edge tiles are
			// the ones it wrote, without reading them back.
			if rng, err := l.factory.NewRange(0, b.size, append([][]byte(nil), b.hashes...)); err == nil {
				return &batchTx{tx: tx, count: count, rng: rng, edge: b.edge}, nil
			}
		}
		if rng, edge, ok := l.reuseBorder(ctx, tx, b); ok {
			return &batchTx{tx: tx, count: count, rng: rng, edge: edge}, nil
		}
	}
	l.border = nil
	rng, edge, err := l.readBorder(ctx, tx, count)
	if err != nil {
		return nil, err
	}
	if err := l.checkStored(cpNote, count, rng); err != nil {
		return nil, err
	}
	return &batchTx{tx: tx, count: count, rng: rng, edge: edge}, nil
}

// finish appends entries in the open transaction bt (steps 2 to 4) and
// commits, or, with no entries, commits the empty tree's checkpoint if the
// store has none and otherwise rolls back. On error nothing is committed.
func (l *Log) finish(ctx context.Context, bt *batchTx, entries [][]byte, sides []func() error) (_ uint64, err error) {
	tx, count, rng := bt.tx, bt.count, bt.rng
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if len(entries) == 0 {
		if bt.empty {
			if err := l.writeCheckpoint(ctx, tx, 0, hasher.EmptyRoot()); err != nil {
				return 0, err
			}
			return 0, tx.Commit()
		}
		return 0, tx.Rollback()
	}
	// Every new hash at a tile level (tree level 8L) extends the edge tile
	// of level L; the compact range reports them in index order.
	var fresh [][][]byte
	visit := func(id compact.NodeID, h []byte) {
		if id.Level%TileHeight != 0 {
			return
		}
		lv := int(id.Level / TileHeight)
		for len(fresh) <= lv {
			fresh = append(fresh, nil)
		}
		fresh[lv] = append(fresh[lv], h)
	}
	for _, e := range entries {
		if err := rng.Append(hasher.HashLeaf(e), visit); err != nil {
			return 0, fmt.Errorf("ledger: append at index %d: %w", rng.End(), err)
		}
	}
	root, err := rng.GetRootHash(nil)
	if err != nil {
		return 0, fmt.Errorf("ledger: root at size %d: %w", rng.End(), err)
	}
	if err := tx.WriteEntries(ctx, count, entries); err != nil {
		return 0, err
	}
	tiles := extendTiles(count, bt.edge, fresh)
	if err := tx.WriteTiles(ctx, tiles); err != nil {
		return 0, err
	}
	if err := l.writeCheckpoint(ctx, tx, rng.End(), root); err != nil {
		return 0, err
	}
	for _, side := range sides {
		if err := side(); err != nil {
			return 0, fmt.Errorf("ledger: append sidecar: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	// Only now, committed, does the batch's checkpoint become what
	// WaitCheckpoint may hand out without asking storage.
	l.latest.Store(l.pending)
	l.border = nextBorder(bt.edge, tiles, rng, l.pending.Note)
	if u, ok := tx.(undisturbedTx); ok {
		l.border.commits, l.border.counted = u.Committed()+1, true
	}
	l.batches.Add(1)
	l.entries.Add(uint64(len(entries)))
	l.notifyMu.Lock()
	close(l.notify)
	l.notify = make(chan struct{})
	l.notifyMu.Unlock()
	return count, nil
}

// readBorder loads the edge tiles of the tree of size size (the partial tile of
// every level, whose stored width must be exactly the one that size implies)
// and the compact range [0, size) computed from them.
func (l *Log) readBorder(ctx context.Context, tx AppendTx, size uint64) (*compact.Range, map[uint8][]byte, error) {
	edge := map[uint8][]byte{}
	ids := edgeTileIDs(size)
	hs, err := tx.Tiles(ctx, ids)
	if err != nil {
		return nil, nil, fmt.Errorf("ledger: right border at size %d: %w", size, err)
	}
	for i, id := range ids {
		if got, want := len(hs[i])/HashSize, tileWidthAt(id, size); got != want {
			return nil, nil, fmt.Errorf("ledger: store of %q at size %d: widest tile %d/%d has width %d, want %d", l.origin, size, id.Level, id.Index, got, want)
		}
		edge[id.Level] = hs[i]
	}
	rd := newTileReader(func(_ context.Context, ids []TileID) ([][]byte, error) {
		out := make([][]byte, len(ids))
		for i, id := range ids {
			if out[i] = edge[id.Level]; out[i] == nil || tileWidthAt(id, size) == TileWidth {
				return nil, fmt.Errorf("ledger: right border at size %d needs tile %d/%d: %w", size, id.Level, id.Index, ErrNotFound)
			}
		}
		return out, nil
	})
	hashes, err := rd.nodes(ctx, compact.RangeNodes(0, size, nil))
	if err != nil {
		return nil, nil, fmt.Errorf("ledger: right border at size %d: %w", size, err)
	}
	rng, err := l.factory.NewRange(0, size, hashes)
	if err != nil {
		return nil, nil, fmt.Errorf("ledger: right border at size %d: %w", size, err)
	}
	return rng, edge, nil
}

// reuseBorder returns b as the open transaction's border if the stored
// edge tiles equal b's.
func (l *Log) reuseBorder(ctx context.Context, tx AppendTx, b *committedBorder) (*compact.Range, map[uint8][]byte, bool) {
	ids := edgeTileIDs(b.size)
	hs, err := tx.Tiles(ctx, ids)
	if err != nil || len(ids) != len(b.edge) {
		return nil, nil, false
	}
	edge := make(map[uint8][]byte, len(ids))
	for i, id := range ids {
		if !bytes.Equal(hs[i], b.edge[id.Level]) {
			return nil, nil, false
		}
		edge[id.Level] = hs[i]
	}
	rng, err := l.factory.NewRange(0, b.size, append([][]byte(nil), b.hashes...))
	if err != nil {
		return nil, nil, false
	}
	return rng, edge, true
}

// edgeTileIDs are the partial tiles of a tree of size size, by level.
func edgeTileIDs(size uint64) []TileID {
	var ids []TileID
	for lv := uint8(0); lv <= MaxLevel && levelCount(lv, size) > 0; lv++ {
		if levelCount(lv, size)%TileWidth != 0 {
			ids = append(ids, TileID{Level: lv, Index: levelCount(lv, size) / TileWidth})
		}
	}
	return ids
}

// nextBorder is the border after a commit that extended the tree to
// rng.End() by writing tiles over the previous partial tiles edge: the
// partial tile of each level is the one written, or the previous one if
// that level did not grow.
func nextBorder(edge map[uint8][]byte, tiles []Tile, rng *compact.Range, note []byte) *committedBorder {
	size := rng.End()
	b := &committedBorder{size: size, note: note, hashes: append([][]byte(nil), rng.Hashes()...), edge: map[uint8][]byte{}}
	for lv := uint8(0); lv <= MaxLevel && levelCount(lv, size) > 0; lv++ {
		if levelCount(lv, size)%TileWidth == 0 {
			continue
		}
		idx := levelCount(lv, size) / TileWidth
		h, found := edge[lv], false
		for _, t := range tiles {
			if t.Level == lv && t.Index == idx {
				h, found = t.Hashes, true
			}
		}
		if !found && (h == nil || uint64(len(h)/HashSize) != levelCount(lv, size)%TileWidth) {
			return nil // cannot tell: read the border from storage next time
		}
		b.edge[lv] = h
	}
	return b
}

// extendTiles returns the tiles to write when the tree of size oldSize, whose
// partial tiles are edge (by level), grows by fresh[L] hashes at each tile
// level L: each touched tile once, at its new width. Full tiles are never
// written twice; a partial tile grows as a new, wider row.
func extendTiles(oldSize uint64, edge map[uint8][]byte, fresh [][][]byte) []Tile {
	var out []Tile
	for lv, hs := range fresh {
		if len(hs) == 0 {
			continue
		}
		id := TileID{Level: uint8(lv), Index: levelCount(uint8(lv), oldSize) / TileWidth}
		cur := make([]byte, 0, TileWidth*HashSize)
		cur = append(cur, edge[uint8(lv)]...)
		for _, h := range hs {
			cur = append(cur, h...)
			if len(cur) == TileWidth*HashSize {
				out = append(out, Tile{TileID: id, Hashes: cur})
				id.Index++
				cur = make([]byte, 0, TileWidth*HashSize)
			}
		}
		if len(cur) > 0 {
			out = append(out, Tile{TileID: id, Hashes: cur})
		}
	}
	return out
}

// checkStored verifies that the stored latest checkpoint is this log's and
// commits to the root of the stored right border.
func (l *Log) checkStored(n []byte, size uint64, rng *compact.Range) error {
	cp, err := l.parseOwn(n)
	if err != nil {
		return err
	}
	root, err := rootOf(rng)
	if err != nil {
		return err
	}
	if cp.Size != size || !bytes.Equal(cp.Root, root) {
		return fmt.Errorf("ledger: stored checkpoint of %q at size %d does not match the stored tree (root %x, tree root %x)", l.origin, size, cp.Root, root)
	}
	return nil
}

func rootOf(rng *compact.Range) ([]byte, error) {
	if rng.End() == 0 {
		return hasher.EmptyRoot(), nil
	}
	root, err := rng.GetRootHash(nil)
	if err != nil {
		return nil, fmt.Errorf("ledger: root at size %d: %w", rng.End(), err)
	}
	return root, nil
}

func (l *Log) writeCheckpoint(ctx context.Context, tx AppendTx, size uint64, root []byte) error {
	signed, err := signNote(l.signer, l.origin, size, root)
	if err != nil {
		return err
	}
	if err := tx.WriteCheckpoint(ctx, size, signed); err != nil {
		return err
	}
	l.pending = &Checkpoint{Origin: l.origin, Size: size, Root: root, Note: signed}
	return nil
}

// signNote returns the checkpoint signed note of origin at size and root.
func signNote(signer note.Signer, origin string, size uint64, root []byte) ([]byte, error) {
	signed, err := note.Sign(&note.Note{Text: string(marshalBody(origin, size, root))}, signer)
	if err != nil {
		return nil, fmt.Errorf("ledger: sign checkpoint of %q at size %d: %w", origin, size, err)
	}
	return signed, nil
}

// parseOwn parses a checkpoint note read from this log's storage. The
// signature is not verified (the Log holds only a signer); the body must be
// canonical and name this log's origin.
func (l *Log) parseOwn(n []byte) (Checkpoint, error) {
	text, err := noteText(n)
	if err != nil {
		return Checkpoint{}, err
	}
	cp, err := parseBody(text)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != l.origin {
		return Checkpoint{}, fmt.Errorf("ledger: stored checkpoint has origin %q, want %q", cp.Origin, l.origin)
	}
	cp.Note = n
	return cp, nil
}

// Checkpoint returns the latest committed checkpoint.
func (l *Log) Checkpoint(ctx context.Context) (Checkpoint, error) {
	size, n, err := l.st.LatestCheckpoint(ctx)
	if err != nil {
		return Checkpoint{}, err
	}
	cp, err := l.parseOwn(n)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Size != size {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint stored at size %d says size %d", size, cp.Size)
	}
	return cp, nil
}

// Entry returns the entry at index.
func (l *Log) Entry(ctx context.Context, index uint64) ([]byte, error) {
	if index == ^uint64(0) {
		return nil, fmt.Errorf("ledger: entry %d: %w", index, ErrNotFound)
	}
	es, err := l.st.Entries(ctx, index, index+1)
	if err != nil {
		return nil, err
	}
	return es[0], nil
}

// Entries returns the entries with indices in [from, to), at most
// MaxReadEntries of them.
func (l *Log) Entries(ctx context.Context, from, to uint64) ([][]byte, error) {
	if from > to || to-from > MaxReadEntries {
		return nil, fmt.Errorf("ledger: entries [%d, %d): want from <= to and at most %d entries", from, to, MaxReadEntries)
	}
	return l.st.Entries(ctx, from, to)
}

// committedSize returns the size of the latest checkpoint.
func (l *Log) committedSize(ctx context.Context) (uint64, error) {
	size, _, err := l.st.LatestCheckpoint(ctx)
	return size, err
}

// InclusionProof returns the RFC 6962 inclusion proof of entry index in the
// tree of the given size, built from stored subtree hashes. It requires
// index < size <= the latest checkpoint's size.
func (l *Log) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	cur, err := l.committedSize(ctx)
	if err != nil {
		return nil, err
	}
	if index >= size || size > cur {
		return nil, fmt.Errorf("ledger: inclusion proof of index %d in size %d: want index < size <= %d", index, size, cur)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("ledger: inclusion proof of index %d in size %d: %w", index, size, err)
	}
	return l.rehash(ctx, nodes)
}

// ConsistencyProof returns the RFC 6962 consistency proof from the tree of
// size from to the tree of size to, built from stored subtree hashes. It
// requires from <= to <= the latest checkpoint's size.
func (l *Log) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	cur, err := l.committedSize(ctx)
	if err != nil {
		return nil, err
	}
	if from > to || to > cur {
		return nil, fmt.Errorf("ledger: consistency proof from size %d to %d: want from <= to <= %d", from, to, cur)
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, fmt.Errorf("ledger: consistency proof from size %d to %d: %w", from, to, err)
	}
	return l.rehash(ctx, nodes)
}

func (l *Log) rehash(ctx context.Context, nodes proof.Nodes) ([][]byte, error) {
	hashes, err := newTileReader(l.st.Tiles).nodes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// ProveEntry returns the C2SP tlog-proof text of entry index against cp,
// which must be a checkpoint of this log (its note may carry cosignatures).
// The proof is verified against cp's root before it is returned.
func (l *Log) ProveEntry(ctx context.Context, index uint64, cp Checkpoint) ([]byte, error) {
	if cp.Origin != l.origin {
		return nil, fmt.Errorf("ledger: prove entry %d: checkpoint origin %q, want %q", index, cp.Origin, l.origin)
	}
	stored, err := l.st.CheckpointAt(ctx, cp.Size)
	if err != nil {
		return nil, fmt.Errorf("ledger: prove entry %d: %w", index, err)
	}
	own, err := l.parseOwn(stored)
	if err != nil {
		return nil, err
	}
	given, err := l.parseOwn(cp.Note)
	if err != nil {
		return nil, fmt.Errorf("ledger: prove entry %d: given checkpoint: %w", index, err)
	}
	if given.Size != cp.Size || !bytes.Equal(given.Root, cp.Root) || !bytes.Equal(own.Root, cp.Root) {
		return nil, fmt.Errorf("ledger: prove entry %d: checkpoint at size %d (root %x) is not the stored one (root %x)", index, cp.Size, cp.Root, own.Root)
	}
	hashes, err := l.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, err
	}
	entry, err := l.Entry(ctx, index)
	if err != nil {
		return nil, err
	}
	if err := proof.VerifyInclusion(hasher, index, cp.Size, hasher.HashLeaf(entry), hashes, cp.Root); err != nil {
		return nil, fmt.Errorf("ledger: prove entry %d at size %d: stored hashes do not verify: %w", index, cp.Size, err)
	}
	return Proof{Index: index, Hashes: hashes, Checkpoint: cp.Note}.Marshal(), nil
}

// Origin returns the log's origin: the checkpoint origin line and the name
// of its signing key.
func (l *Log) Origin() string { return l.origin }

// WaitCheckpoint waits until a checkpoint covering entry index (of size
// greater than index) is committed and returns one: the latest checkpoint
// this Log committed if it covers index, otherwise the first stored one
// that does (with one checkpoint per batch, the one committed with the
// entry).
// It returns early with the context's error. The checkpoint's signature is
// the log's own and is not re-verified here.
func (l *Log) WaitCheckpoint(ctx context.Context, index uint64) (Checkpoint, error) {
	for {
		l.notifyMu.Lock()
		ch := l.notify // taken before the read, so no commit is missed
		l.notifyMu.Unlock()
		// The checkpoint this Log committed last answers most waiters
		// without a storage query (under load, thousands of waiters would
		// otherwise each query). Storage is asked only for entries another
		// process appended, or an index this Log has not reached.
		if cp := l.latest.Load(); cp != nil && cp.Size > index {
			return *cp, nil
		}
		size, n, err := l.st.CheckpointCovering(ctx, index)
		if err == nil {
			cp, err := l.parseOwn(n)
			if err != nil {
				return Checkpoint{}, err
			}
			if cp.Size != size || cp.Size <= index {
				return Checkpoint{}, fmt.Errorf("ledger: checkpoint stored at size %d says size %d, want > %d", size, cp.Size, index)
			}
			return cp, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Checkpoint{}, err
		}
		t := time.NewTimer(waitPoll)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return Checkpoint{}, fmt.Errorf("ledger: wait for checkpoint covering index %d: %w", index, ctx.Err())
		}
		t.Stop()
	}
}
