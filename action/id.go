package action

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// NewID returns a fresh identifier: 32 lower-case hex digits of 128 bits,
// the first 48 the Unix time of t in milliseconds (big-endian, as in a
// UUIDv7), the other 80 from crypto/rand.
//
// The time prefix makes identifiers made later sort later, so the B-tree
// indexes keyed by them (executions, tasks, grant jti) grow at their right
// edge: a commit of many new rows touches a few pages instead of one page
// per row. Nothing may rely on an identifier being unguessable beyond its
// 80 random bits, nor on its time (it is the maker's clock, unverified).
func NewID(t time.Time) string {
	var b [16]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(t.UnixMilli()))
	copy(b[:6], ms[2:])
	if _, err := rand.Read(b[6:]); err != nil {
		panic(err) // crypto/rand.Read never returns an error (Go 1.24+)
	}
	return hex.EncodeToString(b[:])
}
