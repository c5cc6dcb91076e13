package sandbox

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"
)

// BenchmarkStartTrue measures the start-up cost of /usr/bin/true run plainly,
// in a sandbox with namespaces and seccomp only, in a sandbox with every
// kind of limit, the same with an egress allow-list (proxy and bridge), and
// under bubblewrap with comparable restrictions (new user, PID and network
// namespaces, a fresh /proc, read-only /usr and /etc, no capabilities). The
// variants are interleaved in every iteration so that load from other
// processes affects them alike; it reports the median of each in ms and the
// sandbox's overhead over plain exec as a multiple of bwrap's ("x-bwrap",
// goal ≤ 2).
func BenchmarkStartTrue(b *testing.B) {
	startTrue(b)
}

// BenchmarkStartTrueCallerHeap is BenchmarkStartTrue from a caller holding
// 0 or 256 MiB of live heap. Creating a user namespace makes Go's
// os/exec fork the caller (no vfork: the child must wait for its uid and gid
// maps), which copies the caller's page tables: the sandbox's start-up cost
// grows with the caller's resident memory, bwrap's (started with vfork)
// does not.
func BenchmarkStartTrueCallerHeap(b *testing.B) {
	for _, mib := range []int{0, 256} {
		b.Run(fmt.Sprintf("heap=%dMiB", mib), func(b *testing.B) {
			ballast := make([]byte, mib<<20)
			for i := 0; i < len(ballast); i += 4096 {
				ballast[i] = 1 // resident, not just reserved
			}
			startTrue(b)
			runtime.KeepAlive(ballast)
		})
	}
}

func startTrue(b *testing.B) {
	const truePath = "/usr/bin/true"
	const ld = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
	nsOnly := Spec{Network: &Network{}}
	full := Spec{
		Network:     &Network{},
		Read:        []string{"/usr", "/etc"},
		Exec:        []string{truePath, ld},
		CPUSeconds:  10,
		MemoryBytes: 1 << 30,
		EnvAllow:    []string{"PATH"},
	}
	egress := full
	egress.Network = &Network{Allow: []string{"127.0.0.1:1"}}
	for _, s := range []Spec{nsOnly, full, egress} {
		if err := Check(s, host); err != nil {
			b.Skip(err)
		}
	}
	bwrap, err := exec.LookPath("bwrap")
	if err != nil {
		b.Skip("bubblewrap not installed")
	}
	bwrapArgs := []string{"--unshare-user", "--unshare-pid", "--unshare-net", "--die-with-parent",
		"--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--symlink", "usr/lib64", "/lib64",
		"--symlink", "usr/lib", "/lib", "--proc", "/proc", "--cap-drop", "ALL", "--clearenv", truePath}

	sandboxed := func(s Spec) func() error {
		return func() error {
			cmd, err := Command(context.Background(), s, truePath, nil, nil)
			if err != nil {
				return err
			}
			return cmd.Run()
		}
	}
	variants := []struct {
		name string
		run  func() error
		took []time.Duration
	}{
		{name: "plain", run: func() error { return exec.Command(truePath).Run() }},
		{name: "sandbox-ns", run: sandboxed(nsOnly)},
		{name: "sandbox-full", run: sandboxed(full)},
		{name: "bwrap", run: func() error { return exec.Command(bwrap, bwrapArgs...).Run() }},
		{name: "sandbox-egress", run: sandboxed(egress)},
	}
	for b.Loop() {
		for i := range variants {
			start := time.Now()
			if err := variants[i].run(); err != nil {
				b.Fatalf("%s: %v", variants[i].name, err)
			}
			variants[i].took = append(variants[i].took, time.Since(start))
		}
	}
	median := func(d []time.Duration) float64 {
		d = slices.Clone(d)
		slices.Sort(d)
		return float64(d[len(d)/2]) / float64(time.Millisecond)
	}
	m := make([]float64, len(variants))
	for i, v := range variants {
		m[i] = median(v.took)
		b.ReportMetric(m[i], v.name+"-ms")
	}
	if bw := m[3] - m[0]; bw > 0 {
		b.ReportMetric((m[1]-m[0])/bw, "ns-x-bwrap")
		b.ReportMetric((m[2]-m[0])/bw, "full-x-bwrap")
		b.ReportMetric((m[4]-m[0])/bw, "egress-x-bwrap")
	}
}
