package action

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestNewIDSortsByTimeAndIsUnique(t *testing.T) {
	base := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	seen := map[string]bool{}
	prev := ""
	for i := range 1000 {
		id := NewID(base.Add(time.Duration(i) * time.Millisecond))
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("NewID = %q, want 32 lower-case hex digits", id)
		}
		if seen[id] {
			t.Fatalf("NewID repeated %q", id)
		}
		seen[id] = true
		if id <= prev {
			t.Fatalf("NewID %q made 1 ms after %q does not sort after it", id, prev)
		}
		prev = id
	}
	// The prefix is the time in milliseconds.
	if got, want := NewID(base)[:12], fmt.Sprintf("%012x", base.UnixMilli()); got != want {
		t.Errorf("time prefix = %s, want %s", got, want)
	}
	// Within one millisecond the random part keeps them distinct.
	a, b := NewID(base), NewID(base)
	if a == b {
		t.Errorf("two IDs in one millisecond are equal: %s", a)
	}
}
