// Command ledgerbench measures etb's ledger and Tessera's POSIX log side by
// side: the same entry size and the same number of concurrent appenders,
// each system in its own child process (so that peak RSS and heap are its
// own), one after the other (so that they do not share the two cores).
//
// For each system it reports durable appends per second, the latency from
// the start of an append to its durable acknowledgement, the latency to a
// signed checkpoint covering the entry, peak RSS and peak Go heap, and then
// the ratios etb/Tessera.
//
//	go run ./cmd/ledgerbench -duration 20s -concurrency 64 -size 512
//	go run ./cmd/ledgerbench -memory -entries 10000000
//
// With -memory it appends -entries entries (default 10,000,000) to etb's
// ledger alone and prints the live heap (after a GC), RSS and database size
// every -every entries, to show that memory stays flat.
//
// The benchmark writes only under -dir (default: a new temporary directory,
// removed afterwards unless -keep).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/etbproject/etb/bench/internal/measure"
	"github.com/etbproject/etb/bench/internal/sidebyside"
)

// config is what a run is asked to do; the parent passes it to its children
// as flags.
type config struct {
	Entries     uint64
	Size        int
	Concurrency int
	Duration    time.Duration
	Dir         string
	Keep        bool
	Systems     string
	Verbose     bool

	// Tessera settings; zero means Tessera's default.
	TesseraCheckpointInterval time.Duration
	TesseraBatchMaxAge        time.Duration
	TesseraBatchMaxSize       uint
	TesseraPoll               time.Duration

	// EtbWait makes etb's appenders call WaitCheckpoint after Append.
	EtbWait bool

	Memory bool
	Every  uint64

	CPUProfile string
}

func (c *config) flags(fs *flag.FlagSet) {
	fs.Uint64Var(&c.Entries, "entries", 0, "stop after this many acknowledged entries per system (0: only -duration; -memory: 10000000)")
	fs.IntVar(&c.Size, "size", 512, "bytes per entry")
	fs.IntVar(&c.Concurrency, "concurrency", 64, "concurrent appenders")
	fs.DurationVar(&c.Duration, "duration", 15*time.Second, "stop appending after this long per system (0: only -entries)")
	fs.StringVar(&c.Dir, "dir", "", "directory for the logs (default: a new temporary directory)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the logs written under -dir")
	fs.StringVar(&c.Systems, "systems", "etb,tessera", "comma-separated systems to run, in order: etb, tessera")
	fs.BoolVar(&c.Verbose, "v", false, "show the children's logs")
	fs.DurationVar(&c.TesseraCheckpointInterval, "tessera-checkpoint-interval", 0, "Tessera WithCheckpointInterval (0: its default, 10s; minimum 100ms)")
	fs.DurationVar(&c.TesseraBatchMaxAge, "tessera-batch-max-age", 0, "Tessera WithBatching max age (0: its default, 250ms)")
	fs.UintVar(&c.TesseraBatchMaxSize, "tessera-batch-max-size", 0, "Tessera WithBatching max size (0: its default, 256)")
	fs.DurationVar(&c.TesseraPoll, "tessera-poll", 10*time.Millisecond, "poll period of Tessera's PublicationAwaiter")
	fs.BoolVar(&c.EtbWait, "etb-wait", true, "etb: call Log.WaitCheckpoint after each Append (false: Append's return, whose transaction commits a covering checkpoint, is the coverage time)")
	fs.BoolVar(&c.Memory, "memory", false, "memory mode: append -entries to etb's ledger and sample memory every -every entries")
	fs.Uint64Var(&c.Every, "every", 1_000_000, "memory mode: sample every this many entries")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of each system's run to this path plus \".<system>\"")
}

// args renders c as the flags that parse back to it.
func (c *config) args() []string {
	return []string{
		fmt.Sprintf("-entries=%d", c.Entries),
		fmt.Sprintf("-size=%d", c.Size),
		fmt.Sprintf("-concurrency=%d", c.Concurrency),
		fmt.Sprintf("-duration=%s", c.Duration),
		fmt.Sprintf("-dir=%s", c.Dir),
		fmt.Sprintf("-keep=%t", c.Keep),
		fmt.Sprintf("-tessera-checkpoint-interval=%s", c.TesseraCheckpointInterval),
		fmt.Sprintf("-tessera-batch-max-age=%s", c.TesseraBatchMaxAge),
		fmt.Sprintf("-tessera-batch-max-size=%d", c.TesseraBatchMaxSize),
		fmt.Sprintf("-tessera-poll=%s", c.TesseraPoll),
		fmt.Sprintf("-cpuprofile=%s", c.CPUProfile),
		fmt.Sprintf("-etb-wait=%t", c.EtbWait),
	}
}

func (c *config) check() error {
	switch {
	case c.Size < 16 || c.Size > 65535:
		return fmt.Errorf("-size %d: want 16..65535 bytes", c.Size)
	case c.Concurrency < 1:
		return fmt.Errorf("-concurrency %d: want at least 1", c.Concurrency)
	case c.Duration < 0:
		return fmt.Errorf("-duration %s: want >= 0", c.Duration)
	case !c.Memory && c.Entries == 0 && c.Duration == 0:
		return errors.New("one of -entries and -duration must be set")
	case c.Memory && c.Every == 0:
		return errors.New("-every must be at least 1")
	}
	return sidebyside.CheckSystems(c.Systems, slices.Sorted(maps.Keys(runners))...)
}

// runners maps a system name to the function that measures it in-process.
var runners = map[string]func(context.Context, *config) (*Result, error){
	"etb":     runEtb,
	"tessera": runTessera,
}

func main() {
	var c config
	fs := flag.NewFlagSet("ledgerbench", flag.ExitOnError)
	c.flags(fs)
	child := fs.String("child", "", "internal: measure this one system and print its result as JSON")
	fs.Parse(os.Args[1:])
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "ledgerbench:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	var err error
	switch {
	case c.Memory:
		if c.Entries == 0 {
			c.Entries = 10_000_000
		}
		err = withDir(&c, func() error { return runMemory(ctx, &c, os.Stdout) })
	case *child != "":
		err = runChild(ctx, &c, *child)
	default:
		err = withDir(&c, func() error { return runParent(ctx, &c) })
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledgerbench:", err)
		os.Exit(1)
	}
}

// withDir runs f with c.Dir set, creating a temporary directory if none was
// given and removing it afterwards unless c.Keep.
func withDir(c *config, f func() error) error {
	if c.Dir == "" {
		d, err := os.MkdirTemp("", "ledgerbench-")
		if err != nil {
			return err
		}
		c.Dir = d
		if !c.Keep {
			defer os.RemoveAll(d)
		}
	}
	return f()
}

func runChild(ctx context.Context, c *config, system string) error {
	run, ok := runners[system]
	if !ok {
		return fmt.Errorf("unknown system %q", system)
	}
	r, err := sidebyside.Child(ctx, system, c.CPUProfile, func(ctx context.Context) (*Result, error) { return run(ctx, c) })
	if err != nil {
		return err
	}
	if _, r.PeakRSS, err = measure.ProcStatus(); err != nil {
		return err
	}
	return sidebyside.Print(r)
}

// runParent runs each system in a child process and prints the table.
func runParent(ctx context.Context, c *config) error {
	fmt.Printf("ledgerbench: %d appenders, %d-byte entries, ", c.Concurrency, c.Size)
	if c.Entries > 0 {
		fmt.Printf("up to %d entries ", c.Entries)
	}
	if c.Duration > 0 {
		fmt.Printf("up to %s ", c.Duration)
	}
	fmt.Printf("per system; GOMAXPROCS=%d, %s, dir %s\n", runtime.GOMAXPROCS(0), runtime.Version(), c.Dir)
	results, err := sidebyside.Each[Result](ctx, "ledgerbench", c.Systems, c.args(), c.Verbose)
	if err != nil {
		return err
	}
	printTable(os.Stdout, results)
	return nil
}

// Result is what one system measured.
type Result struct {
	System    string
	Entries   uint64        // acknowledged durable entries
	Elapsed   time.Duration // from the first append to the last durable acknowledgement
	Durable   Latency       // append start → durable acknowledgement
	Covered   Latency       // append start → a signed checkpoint covering the entry is published
	PeakRSS   uint64        // VmHWM of the child process, bytes
	PeakHeap  uint64        // peak Go heap objects (HeapAlloc), bytes, sampled every 10ms
	Pushbacks uint64        // appends refused with pushback and retried (Tessera)
	Batches   uint64        // commits (etb)
	Note      string        // how "covered" was measured
}

// Latency summarises a latency histogram.
type Latency struct {
	N             uint64
	P50, P99, Max time.Duration
}

// Rate returns durable entries per second.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Entries) / r.Elapsed.Seconds()
}

func printTable(w io.Writer, rs []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t") }
	head := []string{"", "entries", "entries/s durable", "durable p50", "durable p99", "covered p50", "covered p99", "peak RSS", "peak heap"}
	row(head...)
	for _, r := range rs {
		row(r.System, fmt.Sprint(r.Entries), fmt.Sprintf("%.0f", r.Rate()),
			ms(r.Durable.P50), ms(r.Durable.P99), ms(r.Covered.P50), ms(r.Covered.P99),
			mib(r.PeakRSS), mib(r.PeakHeap))
	}
	var etb, tes *Result
	for _, r := range rs {
		switch r.System {
		case "etb":
			etb = r
		case "tessera":
			tes = r
		}
	}
	if etb != nil && tes != nil {
		// Throughput: higher is better, so etb/Tessera; latencies and
		// memory: lower is better, so Tessera/etb ("N× better").
		row("etb vs Tessera",
			"",
			ratio(etb.Rate(), tes.Rate())+" more",
			ratio(sec(tes.Durable.P50), sec(etb.Durable.P50))+" lower",
			ratio(sec(tes.Durable.P99), sec(etb.Durable.P99))+" lower",
			ratio(sec(tes.Covered.P50), sec(etb.Covered.P50))+" lower",
			ratio(sec(tes.Covered.P99), sec(etb.Covered.P99))+" lower",
			ratio(float64(tes.PeakRSS), float64(etb.PeakRSS))+" lower",
			ratio(float64(tes.PeakHeap), float64(etb.PeakHeap))+" lower")
	}
	tw.Flush()
	for _, r := range rs {
		fmt.Fprintf(w, "%s: %d appends acknowledged in %s; durable max %s, covered max %s", r.System, r.Entries, r.Elapsed.Round(time.Millisecond), ms(r.Durable.Max), ms(r.Covered.Max))
		if r.Batches > 0 {
			fmt.Fprintf(w, "; %d commits (%.1f entries/commit)", r.Batches, float64(r.Entries)/float64(r.Batches))
		}
		if r.Pushbacks > 0 {
			fmt.Fprintf(w, "; %d pushbacks retried", r.Pushbacks)
		}
		fmt.Fprintf(w, "\n  covered: %s\n", r.Note)
	}
}

func sec(d time.Duration) float64 { return d.Seconds() }

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f×", a/b)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
