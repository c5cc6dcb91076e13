package enforce

import "testing"

func TestParseStat(t *testing.T) {
	tests := []struct {
		line string
		want procInfo
		ok   bool
	}{
		{"42 (sleep) S 7 42 7 0 -1 4194304 1 2 3 4 5 6 7 8 20 0 1 0 12345 0 0\n", procInfo{pid: 42, ppid: 7, pgid: 42, state: 'S', start: 12345}, true},
		{"43 (a) b (c)) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0", procInfo{pid: 43, ppid: 1, pgid: 9, state: 'Z', start: 99}, true},
		{"", procInfo{}, false},
		{"44 (x) S 1 2", procInfo{}, false},
		{"x (y) S 1 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99", procInfo{}, false},
		{"45 (y) S one 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99", procInfo{}, false},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.line))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseStat(%q) = %+v, %v; want %+v, ok %v", tt.line, got, err, tt.want, tt.ok)
		}
	}
}

// BenchmarkObserve measures one sample of the process table, paid every
// observeEvery while a command runs.
func BenchmarkObserve(b *testing.B) {
	t := newTree(1<<30, map[string]bool{})
	for b.Loop() {
		if err := t.observe(); err != nil {
			b.Fatal(err)
		}
	}
}
