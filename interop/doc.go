// Package interop holds tests that check etb against independent
// implementations of the standards it claims: a stock C2SP tlog-tiles client
// (Tessera's client package) following etb's log over HTTP, and the
// transparency-dev Merkle proof verifier checking what it built.
//
// It is its own module so that etb never depends on the implementations it
// is checked against. It has no code of its own besides tests and must never
// be imported.
package interop
