package policy

import (
	"strconv"

	"github.com/gowebpki/jcs"

	"github.com/etbproject/etb/action"
)

// maxExactInt is 2^53: RFC 8785 prints integers of smaller magnitude as
// plain decimals.
const maxExactInt = 1 << 53

// AppendCanonical appends the RFC 8785 form of d, written directly: the
// decision is a ledger event of every execution, and the generic path
// (encoding/json, then a JCS transform that re-parses it) costs several
// times more. It reports false, and the caller uses action.Canonical, when
// d holds what the direct path does not write (obligations with path,
// network or environment scopes, a string that is not UTF-8, a number
// beyond 2^53). TestDecisionAppendCanonicalMatchesJCS checks the two agree.
// Keys are in sorted order; nil slices are written as null, as
// encoding/json does.
func (d Decision) AppendCanonical(b []byte) ([]byte, bool) {
	ok, good := true, true
	str := func(name, v string) {
		b = append(b, name...)
		b, good = action.AppendString(b, v)
		ok = ok && good
	}
	list := func(name string, l []string) {
		b = append(b, name...)
		b, good = action.AppendStrings(b, l)
		ok = ok && good
	}
	num := func(name string, v int64) {
		b = append(b, name...)
		b = strconv.AppendInt(b, v, 10)
		ok = ok && v > -maxExactInt && v < maxExactInt
	}
	str(`{"decision":`, d.Decision)
	num(`,"eval_ns":`, d.EvalNS)
	str(`,"input_hash":`, d.InputHash)
	list(`,"labels_to_add":`, d.LabelsToAdd)
	list(`,"messages":`, d.Messages)
	b = append(b, `,"obligations":`...)
	b, good = d.Obligations.AppendCanonical(b)
	ok = ok && good
	str(`,"policy":{"bundle_hash":`, d.Policy.BundleHash)
	str(`,"engine":`, d.Policy.Engine)
	b = append(b, '}')
	if len(d.Reservations) > 0 {
		b = append(b, `,"reservations":[`...)
		for i, r := range d.Reservations {
			if i > 0 {
				b = append(b, ',')
			}
			cost, err := jcs.NumberToJSON(r.Cost)
			ok = ok && err == nil
			b = append(b, `{"cost":`...)
			b = append(b, cost...)
			str(`,"key":`, r.Key)
			str(`,"limit":`, r.Limit)
			str(`,"slot":`, r.Slot)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	list(`,"rules":`, d.Rules)
	num(`,"state_version":`, d.StateVersion)
	return append(b, '}'), ok
}
