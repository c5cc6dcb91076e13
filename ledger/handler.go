package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
)

// NewHandler returns an http.Handler that serves the C2SP tlog-tiles read
// API of l relative to its mount point (mount it with http.StripPrefix):
//
//	GET checkpoint                 the latest signed checkpoint
//	GET tile/<L>/<N>[.p/<W>]       hash tiles
//	GET tile/entries/<N>[.p/<W>]   entry bundles (big-endian uint16 length, entry)
//
// Only what the latest checkpoint covers is served: a tile or bundle beyond
// it is 404, even if committed rows exist. Tiles and bundles are immutable
// (a (N, W) resource never changes) and carry long-lived cache headers; the
// checkpoint is not cached. A malformed path is 400 with a message saying
// what is wrong; a storage failure is 500 and is logged, not shown.
func NewHandler(l *Log) http.Handler {
	return &handler{l: l}
}

type handler struct{ l *Log }

const (
	cacheImmutable = "public, max-age=31536000, immutable"
	cacheNone      = "no-cache"
)

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed: the log is read-only", http.StatusMethodNotAllowed)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/")
	switch {
	case p == "checkpoint":
		h.checkpoint(w, r)
	case strings.HasPrefix(p, "tile/"):
		id, width, entries, err := ParseTilePath(p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.tile(w, r, id, width, entries)
	default:
		http.Error(w, fmt.Sprintf("not found: %q is not a tlog-tiles path", truncate(p)), http.StatusNotFound)
	}
}

func (h *handler) checkpoint(w http.ResponseWriter, r *http.Request) {
	cp, err := h.l.Checkpoint(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", cacheNone)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(cp.Note)
}

// tile serves the hash tile or entry bundle id of width width, if the latest
// checkpoint covers it.
func (h *handler) tile(w http.ResponseWriter, r *http.Request, id TileID, width int, entries bool) {
	ctx := r.Context()
	size, err := h.l.committedSize(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	what := TilePath(id, width, entries)
	if tileWidthAt(id, size) < width {
		http.Error(w, fmt.Sprintf("not found: %s is beyond the tree of size %d", what, size), http.StatusNotFound)
		return
	}
	var body []byte
	if entries {
		first := id.Index * TileWidth // no overflow: tileWidthAt > 0
		es, err := h.l.st.Entries(ctx, first, first+uint64(width))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for i, e := range es {
			if len(e) > math.MaxUint16 {
				h.fail(w, r, fmt.Errorf("ledger: entry %d is %d bytes, too long for an entry bundle", first+uint64(i), len(e)))
				return
			}
			body = binary.BigEndian.AppendUint16(body, uint16(len(e)))
			body = append(body, e...)
		}
	} else {
		hs, err := h.l.st.Tiles(ctx, []TileID{id})
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if len(hs[0]) < width*HashSize {
			h.fail(w, r, fmt.Errorf("ledger: %s: stored tile has %d hashes, the tree of size %d needs %d", what, len(hs[0])/HashSize, size, width))
			return
		}
		body = hs[0][:width*HashSize]
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", cacheImmutable)
	w.Write(body)
}

// fail answers a storage failure: 404 for ErrNotFound (it can only happen
// for a resource the checkpoint covers if the store is damaged, which Fsck
// reports), 500 otherwise. Details go to the log, not to the client.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	slog.ErrorContext(r.Context(), "ledger: tlog-tiles read failed", "path", r.URL.Path, "err", err)
	if errors.Is(err, ErrNotFound) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	http.Error(w, "internal error reading the log", http.StatusInternalServerError)
}
