// Package measure holds the measuring instruments of etb's benchmarks: a
// fixed-size latency histogram and process memory probes.
//
// It owns only measurement. It must never allocate in proportion to the
// number of samples (a 10-million-entry run must not grow its own heap) and
// never report a percentile with more than 1/64 relative error.
package measure

import (
	"fmt"
	"math"
	"math/bits"
	"time"
)

// subBits is the number of mantissa bits kept per power of two: 64 buckets
// per octave, so a bucket's width is at most 1/64 of its lower bound.
const subBits = 6

const (
	subCount = 1 << subBits
	// Values below subCount nanoseconds get one exact bucket each; above,
	// each of the 64-subBits octaves has subCount buckets.
	numBuckets = subCount + (64-subBits)*subCount
)

// Histogram records durations in logarithmic buckets of relative width at
// most 1/64. Its size is fixed (about 30 KiB) whatever the number of
// samples. The zero value is not ready; use NewHistogram. It is not safe for
// concurrent use: give each goroutine its own and Merge them.
type Histogram struct {
	counts []uint64
	n      uint64
	min    time.Duration
	max    time.Duration
	sum    float64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{counts: make([]uint64, numBuckets), min: math.MaxInt64}
}

// bucketOf returns the bucket of v >= 0.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	exp := bits.Len64(v) - 1 // v in [2^exp, 2^(exp+1)), exp >= subBits
	mant := (v >> (exp - subBits)) & (subCount - 1)
	return subCount + (exp-subBits)*subCount + int(mant)
}

// bucketLow returns the smallest value in bucket b.
func bucketLow(b int) uint64 {
	if b < subCount {
		return uint64(b)
	}
	exp := (b-subCount)/subCount + subBits
	mant := uint64((b - subCount) % subCount)
	return (1 << exp) | mant<<(exp-subBits)
}

// bucketHigh returns the largest value in bucket b.
func bucketHigh(b int) uint64 {
	if b == numBuckets-1 {
		return math.MaxUint64
	}
	return bucketLow(b+1) - 1
}

// Record adds one sample. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	h.n++
	h.sum += float64(d)
	h.min = min(h.min, d)
	h.max = max(h.max, d)
}

// Merge adds every sample of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// Count returns the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest sample, or 0 if there is none.
func (h *Histogram) Max() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.max
}

// Mean returns the mean of the samples, or 0 if there is none.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns an estimate of the q-quantile (0 <= q <= 1) of the
// samples: the midpoint of the bucket holding the sample of rank
// ceil(q*n) (at least 1), clamped to the observed minimum and maximum. Its
// relative error is at most 1/128 of the true sample. It returns 0 if there
// are no samples and panics if q is outside [0, 1].
func (h *Histogram) Quantile(q float64) time.Duration {
	if q < 0 || q > 1 || math.IsNaN(q) {
		panic(fmt.Sprintf("measure: quantile %v outside [0, 1]", q))
	}
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketLow(b), bucketHigh(b)
			mid := time.Duration(lo + (hi-lo)/2)
			return min(max(mid, h.min), h.max)
		}
	}
	return h.max // unreachable: the counts add up to n
}
