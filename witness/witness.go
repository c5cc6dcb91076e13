package witness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

// MaxProofLines is the most consistency proof hashes an add-checkpoint
// request may carry (C2SP tlog-witness).
const MaxProofLines = 63

// maxRequestBytes bounds an add-checkpoint request body: the old size line,
// MaxProofLines base64 hashes and a checkpoint note.
const maxRequestBytes = 32 + MaxProofLines*45 + ledger.MaxNoteSize

// SizeContentType is the media type of a 409 Conflict response body.
const SizeContentType = "text/x.tlog.size"

const witnessSchema = `
CREATE TABLE IF NOT EXISTS witness_checkpoints (
	origin TEXT PRIMARY KEY,
	size   INTEGER NOT NULL CHECK (size >= 0),
	note   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_refused (
	id       INTEGER PRIMARY KEY,
	origin   TEXT NOT NULL,
	old_size INTEGER NOT NULL,
	proof    BLOB NOT NULL,
	note     BLOB NOT NULL,
	reason   TEXT NOT NULL
);
`

// Config configures a witness.
type Config struct {
	// Name is the witness's cosigner name (a signed-note key name, usually
	// a schema-less URL).
	Name string
	// Key is the witness's Ed25519 cosigning key.
	Key ed25519.PrivateKey
	// Logs maps each known log origin to its checkpoint verifier key
	// ("<origin>+<hash>+<base64>"), whose name must be the origin.
	Logs map[string]string
	// Now is the clock of cosignature timestamps; nil means time.Now.
	Now func() time.Time
}

// Witness is a C2SP tlog-witness. Its methods are safe for concurrent use,
// and several Witnesses (in several processes) may share one database.
type Witness struct {
	db     *sql.DB
	signer *cosigner
	logs   map[string]note.Verifier
}

// New returns the witness configured by cfg, keeping its state in db (see
// ledger.OpenSQLite), whose table witness_checkpoints it creates if needed.
func New(ctx context.Context, db *sql.DB, cfg Config) (*Witness, error) {
	if db == nil {
		return nil, errors.New("witness: New needs a database")
	}
	s, err := newCosigner(cfg.Name, cfg.Key, cfg.Now)
	if err != nil {
		return nil, err
	}
	if len(cfg.Logs) == 0 {
		return nil, fmt.Errorf("witness %q: no logs configured", cfg.Name)
	}
	logs := make(map[string]note.Verifier, len(cfg.Logs))
	for origin, vkey := range cfg.Logs {
		v, err := note.NewVerifier(vkey)
		if err != nil {
			return nil, fmt.Errorf("witness %q: log %q: verifier key %q: %w", cfg.Name, origin, vkey, err)
		}
		if v.Name() != origin {
			return nil, fmt.Errorf("witness %q: log %q: verifier key is named %q", cfg.Name, origin, v.Name())
		}
		logs[origin] = v
	}
	if _, err := db.ExecContext(ctx, witnessSchema); err != nil {
		return nil, fmt.Errorf("witness %q: create table witness_checkpoints: %w", cfg.Name, err)
	}
	return &Witness{db: db, signer: s, logs: logs}, nil
}

// VerifierKey returns the witness's cosignature/v1 verifier key text; see
// NewCosignatureVerifier.
func (w *Witness) VerifierKey() (string, error) {
	return CosignatureVerifierKey(w.signer.name, w.signer.key.Public().(ed25519.PublicKey))
}

// Handler returns the witness's HTTP API, relative to its submission
// prefix: POST /add-checkpoint.
func (w *Witness) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /add-checkpoint", w.serveAdd)
	return mux
}

// Latest returns the latest checkpoint the witness cosigned for origin, or
// an error wrapping ledger.ErrNotFound if it cosigned none.
func (w *Witness) Latest(ctx context.Context, origin string) (ledger.Checkpoint, error) {
	v, ok := w.logs[origin]
	if !ok {
		return ledger.Checkpoint{}, fmt.Errorf("witness: unknown log %q", origin)
	}
	_, n, err := w.load(ctx, origin)
	if err != nil {
		return ledger.Checkpoint{}, err
	}
	if n == nil {
		return ledger.Checkpoint{}, fmt.Errorf("witness: no checkpoint of %q: %w", origin, ledger.ErrNotFound)
	}
	return ledger.ParseCheckpoint(n, v)
}

// reqError is a refused request: an HTTP status and the reason.
type reqError struct {
	code int
	msg  string
	size uint64 // the stored size, for 409
}

func (e *reqError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.code, http.StatusText(e.code), e.msg)
}

func refuse(code int, format string, args ...any) *reqError {
	return &reqError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (w *Witness) serveAdd(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxRequestBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(rw, refuse(http.StatusRequestEntityTooLarge, "request body exceeds %d bytes", maxRequestBytes))
			return
		}
		writeError(rw, refuse(http.StatusBadRequest, "reading request body: %v", err))
		return
	}
	cosig, rerr := w.add(r.Context(), body)
	if rerr != nil {
		writeError(rw, rerr)
		return
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.WriteHeader(http.StatusOK)
	rw.Write(cosig)
}

func writeError(rw http.ResponseWriter, e *reqError) {
	rw.Header().Set("X-Content-Type-Options", "nosniff")
	if e.code == http.StatusConflict {
		rw.Header().Set("Content-Type", SizeContentType)
		rw.WriteHeader(e.code)
		fmt.Fprintf(rw, "%d\n", e.size)
		return
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.WriteHeader(e.code)
	fmt.Fprintf(rw, "witness: %s\n", e.msg)
}

// add runs the add-checkpoint checks on a request body and, if they all
// pass, durably records the checkpoint and returns its cosignature line.
func (w *Witness) add(ctx context.Context, body []byte) ([]byte, *reqError) {
	old, proof, cpNote, err := ParseAddCheckpoint(body)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "%v", err)
	}
	origin, _, _ := strings.Cut(string(cpNote), "\n")
	v, ok := w.logs[origin]
	if !ok {
		return nil, refuse(http.StatusNotFound, "unknown log origin %q", truncate(origin))
	}
	n, err := note.Open(cpNote, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		if errors.As(err, &unverified) || errors.As(err, &invalid) {
			return nil, refuse(http.StatusForbidden, "checkpoint of %q is not signed by its log key %08x: %v", origin, v.KeyHash(), err)
		}
		return nil, refuse(http.StatusBadRequest, "checkpoint of %q: %v", origin, err)
	}
	cp, err := ledger.ParseCheckpoint(cpNote, v)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "%v", err)
	}
	if old > cp.Size {
		return nil, refuse(http.StatusBadRequest, "old size %d exceeds checkpoint size %d", old, cp.Size)
	}
	if old == 0 && len(proof) != 0 {
		return nil, refuse(http.StatusBadRequest, "old size 0 with %d proof lines, want none", len(proof))
	}

	storedSize, storedNote, err := w.load(ctx, origin)
	if err != nil {
		return nil, refuse(http.StatusInternalServerError, "%v", err)
	}
	if old != storedSize {
		return nil, &reqError{code: http.StatusConflict, msg: fmt.Sprintf("old size %d, witness has %d", old, storedSize), size: storedSize}
	}
	if storedNote != nil {
		stored, err := ledger.ParseCheckpoint(storedNote, v)
		if err != nil {
			return nil, refuse(http.StatusInternalServerError, "stored checkpoint of %q: %v", origin, err)
		}
		if stored.Size == cp.Size {
			if !bytes.Equal(stored.Root, cp.Root) {
				msg := fmt.Sprintf("checkpoint of %q at size %d has root %x, witness has %x", origin, cp.Size, cp.Root, stored.Root)
				w.recordRefusal(ctx, origin, old, proof, cp.Note, msg)
				return nil, &reqError{code: http.StatusConflict, msg: msg, size: storedSize}
			}
		} else if err := ledger.VerifyConsistency(stored, cp, proof); err != nil {
			w.recordRefusal(ctx, origin, old, proof, cp.Note, err.Error())
			return nil, refuse(http.StatusUnprocessableEntity, "%v", err)
		}
	}
	if rerr := w.swap(ctx, origin, storedNote != nil, old, cp); rerr != nil {
		return nil, rerr
	}
	sig, err := w.signer.Sign([]byte(n.Text))
	if err != nil {
		return nil, refuse(http.StatusInternalServerError, "%v", err)
	}
	return w.signer.line(sig), nil
}

// Refusal is a validly signed checkpoint the witness refused because it is
// not consistent with the one it had cosigned: possible evidence of a fork.
type Refusal struct {
	Origin  string
	OldSize uint64
	Proof   [][]byte
	Note    []byte
	Reason  string
}

// recordRefusal keeps a refused, validly signed checkpoint as evidence. It
// is best effort: the request is refused whether or not this succeeds.
// Only the log key holder can produce such checkpoints, so the table grows
// only if the log misbehaves.
func (w *Witness) recordRefusal(ctx context.Context, origin string, old uint64, proof [][]byte, n []byte, reason string) {
	if old > 1<<63-1 {
		return
	}
	_, _ = w.db.ExecContext(ctx, "INSERT INTO witness_refused (origin, old_size, proof, note, reason) VALUES (?, ?, ?, ?, ?)",
		origin, int64(old), bytes.Join(proof, nil), n, reason)
}

// Refused returns the checkpoints of origin the witness refused as
// inconsistent, oldest first.
func (w *Witness) Refused(ctx context.Context, origin string) ([]Refusal, error) {
	rows, err := w.db.QueryContext(ctx, "SELECT old_size, proof, note, reason FROM witness_refused WHERE origin = ? ORDER BY id", origin)
	if err != nil {
		return nil, fmt.Errorf("witness: refused checkpoints of %q: %w", origin, err)
	}
	defer rows.Close()
	var out []Refusal
	for rows.Next() {
		var old int64
		var p []byte
		r := Refusal{Origin: origin}
		if err := rows.Scan(&old, &p, &r.Note, &r.Reason); err != nil {
			return nil, fmt.Errorf("witness: refused checkpoints of %q: %w", origin, err)
		}
		if old < 0 || len(p)%sha256.Size != 0 {
			return nil, fmt.Errorf("witness: refused checkpoint of %q is malformed", origin)
		}
		r.OldSize = uint64(old)
		for i := 0; i < len(p); i += sha256.Size {
			r.Proof = append(r.Proof, p[i:i+sha256.Size])
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("witness: refused checkpoints of %q: %w", origin, err)
	}
	return out, nil
}

// load returns the stored size and note for origin, or (0, nil) if none.
func (w *Witness) load(ctx context.Context, origin string) (uint64, []byte, error) {
	var size int64
	var n []byte
	err := w.db.QueryRowContext(ctx, "SELECT size, note FROM witness_checkpoints WHERE origin = ?", origin).Scan(&size, &n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("witness: load checkpoint of %q: %w", origin, err)
	}
	if size < 0 {
		return 0, nil, fmt.Errorf("witness: stored checkpoint of %q has size %d", origin, size)
	}
	return uint64(size), n, nil
}

// swap replaces the stored checkpoint of origin, which must still have size
// old (or be absent if !exists), by cp in one statement: a compare-and-swap,
// so two concurrent requests can never roll the stored size back. If the
// stored state moved, it returns a 409 with the current size.
func (w *Witness) swap(ctx context.Context, origin string, exists bool, old uint64, cp ledger.Checkpoint) *reqError {
	if cp.Size > 1<<63-1 {
		return refuse(http.StatusBadRequest, "checkpoint size %d exceeds the storable range", cp.Size)
	}
	var res sql.Result
	var err error
	if exists {
		res, err = w.db.ExecContext(ctx, "UPDATE witness_checkpoints SET size = ?, note = ? WHERE origin = ? AND size = ?",
			int64(cp.Size), cp.Note, origin, int64(old))
	} else {
		res, err = w.db.ExecContext(ctx, "INSERT INTO witness_checkpoints (origin, size, note) VALUES (?, ?, ?) ON CONFLICT (origin) DO NOTHING",
			origin, int64(cp.Size), cp.Note)
	}
	if err != nil {
		return refuse(http.StatusInternalServerError, "store checkpoint of %q at size %d: %v", origin, cp.Size, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		size, _, lerr := w.load(ctx, origin)
		if lerr != nil {
			return refuse(http.StatusInternalServerError, "%v", lerr)
		}
		return &reqError{code: http.StatusConflict, msg: fmt.Sprintf("checkpoint of %q changed concurrently", origin), size: size}
	}
	return nil
}

// ParseAddCheckpoint strictly parses an add-checkpoint request body:
//
//	old <decimal>
//	<base64 hash>          (0..MaxProofLines lines, 32-byte hashes)
//	<empty line>
//	<checkpoint note>
//
// Decimals must have no leading zeros and base64 must be canonical. The
// checkpoint is returned unverified.
func ParseAddCheckpoint(body []byte) (old uint64, proof [][]byte, checkpoint []byte, err error) {
	rest := body
	line := func() (string, bool) {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return "", false
		}
		l := string(rest[:i])
		rest = rest[i+1:]
		return l, true
	}
	l, ok := line()
	s, found := strings.CutPrefix(l, "old ")
	if !ok || !found {
		return 0, nil, nil, errors.New(`request does not start with an "old <size>" line`)
	}
	if old, err = ledger.ParseDecimal(s); err != nil {
		return 0, nil, nil, fmt.Errorf("old size: %w", err)
	}
	for {
		l, ok = line()
		if !ok {
			return 0, nil, nil, errors.New("request has no empty line before the checkpoint")
		}
		if l == "" {
			break
		}
		if len(proof) == MaxProofLines {
			return 0, nil, nil, fmt.Errorf("more than %d consistency proof lines", MaxProofLines)
		}
		h, err := base64.StdEncoding.Strict().DecodeString(l)
		if err != nil || len(h) != sha256.Size || base64.StdEncoding.EncodeToString(h) != l {
			return 0, nil, nil, fmt.Errorf("proof line %d %q is not a canonical base64 32-byte hash", len(proof), truncate(l))
		}
		proof = append(proof, h)
	}
	if len(rest) == 0 {
		return 0, nil, nil, errors.New("request has no checkpoint")
	}
	return old, proof, rest, nil
}

// MarshalAddCheckpoint returns the add-checkpoint request body for old size
// old, consistency proof hashes and a checkpoint note.
func MarshalAddCheckpoint(old uint64, proof [][]byte, checkpoint []byte) []byte {
	var b bytes.Buffer
	b.WriteString("old " + strconv.FormatUint(old, 10) + "\n")
	for _, h := range proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	b.WriteByte('\n')
	b.Write(checkpoint)
	return b.Bytes()
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
