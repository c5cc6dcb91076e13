// Command gatewaybench compares governed decisions over HTTP: etb's gateway
// service (what `etb serve` runs) against Open Policy Agent's server (`opa
// run --server`), side by side, with the same clients, inputs and duration.
//
//	go run ./cmd/gatewaybench -clients 64 -duration 20s [-rounds 3]
//
// Each system's clients run in their own child process, one system after
// the other, so that they do not share the cores; each server is a process
// of its own, as in production:
//
//   - etb: `etb serve --listen 127.0.0.1:PORT` in its own process, the etb
//     binary built from this repository with `go build ./cmd/etb` (or given
//     by -etb), on a temporary home whose CA issues every client its own
//     agent X.509-SVID. Each client has its own connection (mTLS) and calls
//     client.Decide in a loop. Every call is a policy decision, a signed
//     grant when permitted, and the intent and decision events appended
//     durably to the ledger and indexed.
//   - OPA: the `opa` binary of the OPA module version that bench/go.mod
//     requires, built with `go install` on first use (or given by -opa), run
//     as `opa run --server` on 127.0.0.1 over plain HTTP (OPA's default)
//     with default.rego, the Rego equivalent of etb's default policy. Each
//     client POSTs {"input": ACTION} to /v1/data/etb/authz/decision over its
//     own keep-alive connection. OPA only decides: no TLS, no signature, no
//     log (decision logging is off by default).
//
// Both get the same etb.action/v1 inputs in the same rotation (echo hello:
// permit; rm -rf: forbidden; python3: default deny). Before timing, every
// client sends every input once and the answer must equal the expected
// decision, rules and timeout; during timing every answer's decision is
// checked. Any disagreement or error aborts the run. The printed table has
// decisions per second, p50 and p99 latency per system and the ratio etb/OPA,
// and each system's CPU time per decision. With -rounds N, the systems are
// measured in turn N times (a slow spell of a shared machine then falls on
// both) and the rounds' ratios and their medians are printed last.
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
	"sync"
	"text/tabwriter"
	"time"

	"github.com/etbproject/etb/bench/internal/measure"
	"github.com/etbproject/etb/bench/internal/sidebyside"
)

// config is what a run is asked to do; the parent passes it to its children
// as flags.
type config struct {
	Clients  int
	Duration time.Duration
	Systems  string
	OPA      string // path of the opa binary
	Etb      string // path of the etb binary
	Verbose  bool
	// Rounds is how many times the systems are measured in turn (etb, OPA,
	// etb, OPA, ...), so that a slow spell of this shared machine falls on
	// both: each round's ratio is printed, then their median.
	Rounds int
	// CPUProfile, if set, is where each child writes a CPU profile of its
	// run, plus ".<system>".
	CPUProfile string
}

func (c *config) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.Clients, "clients", 64, "concurrent clients, each with its own connection")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "timed duration per system")
	fs.StringVar(&c.Systems, "systems", "etb,opa", "comma-separated systems to run, in order: etb, opa")
	fs.StringVar(&c.OPA, "opa", "", "path of the opa binary (default: built with go install into the user cache directory)")
	fs.StringVar(&c.Etb, "etb", "", "path of the etb binary (default: built from this repository into a temporary directory)")
	fs.BoolVar(&c.Verbose, "v", false, "show the children's logs")
	fs.IntVar(&c.Rounds, "rounds", 1, "measure the systems in turn this many times and print each round and the median ratios")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of each system's child process (its clients) to this path plus \".<system>\", and etb serve's to this path plus \".etb-serve\" (OPA's server is not profiled)")
}

// args renders c as the flags that parse back to it.
func (c *config) args() []string {
	return []string{
		fmt.Sprintf("-clients=%d", c.Clients),
		fmt.Sprintf("-duration=%s", c.Duration),
		fmt.Sprintf("-systems=%s", c.Systems),
		fmt.Sprintf("-opa=%s", c.OPA),
		fmt.Sprintf("-etb=%s", c.Etb),
		fmt.Sprintf("-v=%t", c.Verbose),
		fmt.Sprintf("-rounds=%d", c.Rounds),
		fmt.Sprintf("-cpuprofile=%s", c.CPUProfile),
	}
}

func (c *config) check() error {
	switch {
	case c.Clients < 1 || c.Clients > 4096:
		return fmt.Errorf("-clients %d: want 1..4096", c.Clients)
	case c.Duration <= 0:
		return fmt.Errorf("-duration %s: want > 0", c.Duration)
	case c.Rounds < 1 || c.Rounds > 100:
		return fmt.Errorf("-rounds %d: want 1..100", c.Rounds)
	}
	return sidebyside.CheckSystems(c.Systems, slices.Sorted(maps.Keys(runners))...)
}

// runners maps a system name to the function that measures it in-process.
var runners = map[string]func(context.Context, *config) (*Result, error){
	"etb": runEtb,
	"opa": runOPA,
}

func main() {
	var c config
	fs := flag.NewFlagSet("gatewaybench", flag.ExitOnError)
	c.flags(fs)
	child := fs.String("child", "", "internal: measure this one system and print its result as JSON")
	fs.Parse(os.Args[1:])
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	var err error
	if *child != "" {
		err = runChild(ctx, &c, *child)
	} else {
		err = runParent(ctx, &c, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		os.Exit(1)
	}
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
	return sidebyside.Print(r)
}

// runParent runs each system in a child process and prints the table.
func runParent(ctx context.Context, c *config, out io.Writer) error {
	if c.OPA == "" && slices.Contains(strings.Split(c.Systems, ","), "opa") {
		path, err := ensureOPA(ctx, os.Stderr)
		if err != nil {
			return err
		}
		c.OPA = path
	}
	if c.Etb == "" && slices.Contains(strings.Split(c.Systems, ","), "etb") {
		dir, err := os.MkdirTemp("", "gatewaybench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		path, err := ensureEtb(ctx, dir, os.Stderr)
		if err != nil {
			return err
		}
		c.Etb = path
	}
	var rounds [][]*Result
	for round := 1; round <= c.Rounds; round++ {
		results, err := sidebyside.Each[Result](ctx, "gatewaybench", c.Systems, c.args(), c.Verbose)
		if err != nil {
			return err
		}
		if err := agree(results); err != nil {
			return err
		}
		if c.Rounds > 1 {
			fmt.Fprintf(out, "round %d of %d: ", round, c.Rounds)
		}
		fmt.Fprintf(out, "gatewaybench: %d clients, %s per system; GOMAXPROCS=%d, NumCPU=%d, %s\n",
			c.Clients, c.Duration, runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.Version())
		printTable(out, results)
		fmt.Fprintln(out)
		rounds = append(rounds, results)
	}
	if c.Rounds > 1 {
		printRounds(out, rounds)
	}
	return nil
}

// printRounds prints, when two systems ran, each round's ratios of the
// first to the second (decisions/s, and CPU per decision of server and
// clients together) and their medians.
func printRounds(w io.Writer, rounds [][]*Result) {
	if len(rounds) == 0 || len(rounds[0]) != 2 {
		return
	}
	a, b := rounds[0][0].System, rounds[0][1].System
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "round\t%s/s\t%s/s\t%s/%s decisions/s\t%s/%s CPU per decision\t\n", a, b, a, b, a, b)
	var rates, cpus []float64
	for i, r := range rounds {
		x, y := r[0], r[1]
		rate := x.Rate() / y.Rate()
		cpu := x.perDecision(x.ServerCPU+x.ClientCPU) / y.perDecision(y.ServerCPU+y.ClientCPU)
		rates, cpus = append(rates, rate), append(cpus, cpu)
		fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%.2f×\t%.2f×\t\n", i+1, x.Rate(), y.Rate(), rate, cpu)
	}
	fmt.Fprintf(tw, "median\t\t\t%.2f×\t%.2f×\t\n", median(rates), median(cpus))
	tw.Flush()
}

// median returns the median of xs (the mean of the middle two for an even
// count); xs is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	if n := len(xs); n%2 == 0 {
		return (xs[n/2-1] + xs[n/2]) / 2
	}
	return xs[len(xs)/2]
}

// Latency summarises a latency histogram.
type Latency struct {
	N   uint64
	P50 time.Duration
	P99 time.Duration
	Max time.Duration
}

func summary(h *measure.Histogram) Latency {
	return Latency{N: h.Count(), P50: h.Quantile(0.50), P99: h.Quantile(0.99), Max: h.Max()}
}

// Result is what one system measured.
type Result struct {
	System    string
	Detail    string        // what the system is, for the table's notes
	Decisions uint64        // answered and checked decisions in the timed phase
	Elapsed   time.Duration // from the start of the timed phase to the last answer
	Overall   Latency
	ByInput   []Latency  // indexed like inputs()
	Outcomes  []*outcome // the outcome seen for each input before timing
	// ServerCPU and ClientCPU are the CPU time (user and system, all
	// threads) that the server process and this child process, which runs
	// the clients, used from the start of the timed phase to its end.
	ServerCPU time.Duration
	ClientCPU time.Duration
	// ServerPeakRSS is the server process's peak resident set size
	// (VmHWM) at the end of the timed phase, in bytes.
	ServerPeakRSS uint64
}

// perDecision returns d divided over the decisions, in microseconds.
func (r *Result) perDecision(d time.Duration) float64 {
	if r.Decisions == 0 {
		return 0
	}
	return float64(d) / 1e3 / float64(r.Decisions)
}

// Rate returns decisions per second.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Decisions) / r.Elapsed.Seconds()
}

// agree checks that every system reported the expected outcome for every
// input: a result that does not is not comparable, and nothing is printed.
func agree(results []*Result) error {
	ins := inputs()
	for _, r := range results {
		if len(r.Outcomes) != len(ins) || len(r.ByInput) != len(ins) {
			return fmt.Errorf("%s reported %d outcomes and %d latencies for %d inputs", r.System, len(r.Outcomes), len(r.ByInput), len(ins))
		}
		for i, in := range ins {
			if o := r.Outcomes[i]; o == nil || !o.equal(in.want) {
				return fmt.Errorf("%s decided %v on %q, want %v", r.System, o, in.name, in.want)
			}
		}
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

// printTable prints the overall table, then the ratio of the first system
// (etb) to the second (OPA) if both ran, then the latencies by input.
func printTable(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tdecisions\tdecisions/s\tp50\tp99\tmax\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t\n", r.System, r.Decisions, r.Rate(), ms(r.Overall.P50), ms(r.Overall.P99), ms(r.Overall.Max))
	}
	if len(results) == 2 {
		a, b := results[0], results[1]
		fmt.Fprintf(tw, "%s/%s\t\t%.2f×\t%.2f×\t%.2f×\t\t\n", a.System, b.System, a.Rate()/b.Rate(),
			float64(a.Overall.P50)/float64(b.Overall.P50), float64(a.Overall.P99)/float64(b.Overall.P99))
	}
	tw.Flush()
	fmt.Fprintln(w)
	printCPU(w, results)
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "input\tdecision\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s n\t%s p50\t%s p99\t", r.System, r.System, r.System)
	}
	fmt.Fprintln(tw)
	for i, in := range inputs() {
		fmt.Fprintf(tw, "%s\t%s\t", in.name, in.want.Decision)
		for _, r := range results {
			l := r.ByInput[i]
			fmt.Fprintf(tw, "%d\t%s\t%s\t", l.N, ms(l.P50), ms(l.P99))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, r := range results {
		fmt.Fprintf(w, "%s: %s\n", r.System, r.Detail)
	}
}

// printCPU prints the CPU time per decision of each system's server and
// clients in the timed phase, the cores the two kept busy, and the
// decisions per second two cores would serve at the server's CPU time per
// decision if the clients ran elsewhere and nothing but CPU limited it: an
// upper bound, not a measurement (the harness's clients share the cores).
func printCPU(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "CPU per decision\tserver µs\tclients µs\tboth µs\tcores busy\t2-core bound, server only\tserver peak RSS\t")
	for _, r := range results {
		srv, cl := r.perDecision(r.ServerCPU), r.perDecision(r.ClientCPU)
		busy := 0.0
		if r.Elapsed > 0 {
			busy = float64(r.ServerCPU+r.ClientCPU) / float64(r.Elapsed)
		}
		bound := 0.0
		if srv > 0 {
			bound = 2e6 / srv
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.2f\t%.0f/s\t%.0f MiB\t\n", r.System, srv, cl, srv+cl, busy, bound, float64(r.ServerPeakRSS)/(1<<20))
	}
	if len(results) == 2 {
		a, b := results[0], results[1]
		ratio := func(x, y time.Duration) float64 {
			if y == 0 {
				return 0
			}
			return a.perDecision(x) / b.perDecision(y)
		}
		fmt.Fprintf(tw, "%s/%s\t%.2f×\t%.2f×\t%.2f×\t\t\t\t\n", a.System, b.System, ratio(a.ServerCPU, b.ServerCPU),
			ratio(a.ClientCPU, b.ClientCPU), ratio(a.ServerCPU+a.ClientCPU, b.ServerCPU+b.ClientCPU))
	}
	tw.Flush()
}

// drive runs one goroutine per client for d: each calls decide on the
// inputs in rotation (client i starts at input i) and records each call's
// latency, and the CPU time that the server (process server) and this
// process used meanwhile. The first error stops the run and is returned.
func drive(ctx context.Context, server, clients int, d time.Duration, decide func(ctx context.Context, client, input int) error) (*Result, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	n := len(inputs())
	type tally struct {
		hist []*measure.Histogram // by input
		last time.Duration        // since start, of the last answer
	}
	tallies := make([]*tally, clients)
	server0, self0, err := cpuTimes(server)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for c := range clients {
		t := &tally{hist: make([]*measure.Histogram, n)}
		for i := range t.hist {
			t.hist[i] = measure.NewHistogram()
		}
		tallies[c] = t
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := c; ctx.Err() == nil; k++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				in := k % n
				if err := decide(ctx, c, in); err != nil {
					cancel(fmt.Errorf("client %d, input %q: %w", c, inputs()[in].name, err))
					return
				}
				now := time.Now()
				t.hist[in].Record(now.Sub(t0))
				t.last = now.Sub(start)
			}
		}()
	}
	wg.Wait()
	server1, self1, err := cpuTimes(server)
	if err != nil {
		return nil, err
	}
	_, peak, err := measure.ProcStatusOf(server)
	if err != nil {
		return nil, err
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	r := &Result{ByInput: make([]Latency, n), ServerCPU: server1 - server0, ClientCPU: self1 - self0, ServerPeakRSS: peak}
	overall := measure.NewHistogram()
	for i := range n {
		h := measure.NewHistogram()
		for _, t := range tallies {
			h.Merge(t.hist[i])
		}
		overall.Merge(h)
		r.ByInput[i] = summary(h)
	}
	for _, t := range tallies {
		r.Elapsed = max(r.Elapsed, t.last)
	}
	r.Overall = summary(overall)
	r.Decisions = overall.Count()
	if r.Decisions == 0 {
		return nil, errors.New("no decision was answered in the timed phase")
	}
	return r, nil
}

// cpuTimes returns the CPU time process server and this process have
// used so far.
func cpuTimes(server int) (srv, self time.Duration, err error) {
	if srv, err = measure.ProcessCPU(server); err != nil {
		return 0, 0, err
	}
	if self, err = measure.SelfCPU(); err != nil {
		return 0, 0, err
	}
	return srv, self, nil
}

// precheck has every client decide every input once, before timing, and
// returns the outcomes, failing on the first one that is not the expected
// outcome. It also opens every client's connection.
func precheck(ctx context.Context, clients int, decide func(ctx context.Context, client, input int) (*outcome, error)) ([]*outcome, error) {
	ins := inputs()
	seen := make([]*outcome, len(ins))
	errs := make([]error, clients)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, in := range ins {
				o, err := decide(ctx, c, i)
				if err != nil {
					errs[c] = fmt.Errorf("client %d, input %q: %w", c, in.name, err)
					return
				}
				if !o.equal(in.want) {
					errs[c] = fmt.Errorf("client %d, input %q: decided %v, want %v", c, in.name, o, in.want)
					return
				}
				mu.Lock()
				seen[i] = o
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("decisions disagree or failed, nothing timed: %w", err)
	}
	return seen, nil
}
