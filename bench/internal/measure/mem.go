package measure

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime/metrics"
	"strconv"
	"sync"
	"time"
)

// heapMetric is the bytes of heap memory occupied by live objects and by
// dead objects not yet swept: what runtime.MemStats.HeapAlloc reports, read
// without stopping the world.
const heapMetric = "/memory/classes/heap/objects:bytes"

// HeapBytes returns the current Go heap object bytes (HeapAlloc).
func HeapBytes() uint64 {
	s := []metrics.Sample{{Name: heapMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// ProcStatus returns the current resident set size (VmRSS) and its peak
// since the process started (VmHWM), in bytes, from /proc/self/status.
func ProcStatus() (rss, peak uint64, err error) {
	return procStatus("/proc/self/status")
}

// ProcStatusOf is ProcStatus of process pid.
func ProcStatusOf(pid int) (rss, peak uint64, err error) {
	return procStatus("/proc/" + strconv.Itoa(pid) + "/status")
}

func procStatus(path string) (rss, peak uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("measure: read process status: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte("VmRSS:")):
			rss, err = kbField(line)
		case bytes.HasPrefix(line, []byte("VmHWM:")):
			peak, err = kbField(line)
		}
		if err != nil {
			return 0, 0, err
		}
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("measure: %s has no VmRSS or VmHWM line", path)
	}
	return rss, peak, nil
}

// kbField parses a "/proc/self/status" line of the form "Name:   123 kB".
func kbField(line []byte) (uint64, error) {
	f := bytes.Fields(line)
	if len(f) != 3 || string(f[2]) != "kB" {
		return 0, fmt.Errorf("measure: unexpected status line %q", line)
	}
	v, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("measure: status line %q: %w", line, err)
	}
	return v << 10, nil
}

// PeakSampler samples the Go heap every period and keeps its peak.
type PeakSampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak uint64
}

// StartPeakSampler starts sampling; Stop ends it.
func StartPeakSampler(period time.Duration) *PeakSampler {
	p := &PeakSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			p.sample()
			select {
			case <-p.stop:
				p.sample()
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *PeakSampler) sample() {
	h := HeapBytes()
	p.mu.Lock()
	p.peak = max(p.peak, h)
	p.mu.Unlock()
}

// Stop ends sampling and returns the peak heap bytes seen.
func (p *PeakSampler) Stop() uint64 {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}
