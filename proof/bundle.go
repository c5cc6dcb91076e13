// Package proof defines the evidence bundle (etb.bundle/v1), the verifier's
// trust file (etb.trust/v1), and the offline verifier behind `etb verify`.
//
// The verifier needs nothing but a bundle and the public keys in a trust
// file: it checks the checkpoint signature, every inclusion proof, the event
// chain and its order, each grant's signature and binding to the recorded
// action, every parent → child delegation link, and re-derives every
// decision by evaluating the bundled policy on the recorded input; for a
// task bundle it also re-derives the task state (labels, recent window,
// state versions) each decision was made on from the tree's own record. The package must never trust a field of the bundle that
// no signature or hash covers, and never read the network or the clock.
package proof

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// BundleVersion and TrustVersion are the "v" values of the two documents.
const (
	BundleVersion = "etb.bundle/v1"
	TrustVersion  = "etb.trust/v1"
)

// MaxBundleBytes bounds what ParseBundle accepts.
const MaxBundleBytes = 64 << 20

// Bundle is the evidence of one execution, or of a whole task tree.
//
// An execution bundle names its Execution and holds only that execution's
// events. A task bundle names the root task in Task, leaves Execution
// empty, and holds the events of every execution of the tree, in ledger
// order; every intent's action.task.root_id is Task.
type Bundle struct {
	V         string `json:"v"`
	Execution string `json:"execution"`
	// Task is the root task of a task bundle ("" for an execution bundle).
	Task string `json:"task,omitempty"`
	// Checkpoint is the signed note (C2SP tlog-checkpoint) every proof is
	// against.
	Checkpoint string `json:"checkpoint"`
	// Events are the execution's events in order.
	Events []Entry `json:"events"`
	// Grants are the compact JWS grants issued for the execution(s), and
	// every delegation grant any of them descends from (par): a grant
	// that belongs to no execution of the bundle is allowed only as some
	// grant's parent.
	Grants []string `json:"grants"`
	// Policies are the sources of the policy bundles the decisions name.
	Policies []Policy `json:"policies"`
	// Consistency maps the decimal size of an earlier checkpoint to the
	// base64 RFC 6962 consistency proof from it to Checkpoint, so a
	// verifier holding that checkpoint can check both are views of one
	// append-only log (`etb verify --since`).
	Consistency map[string][]string `json:"consistency,omitempty"`
}

// Entry is one event with its proof.
type Entry struct {
	// Entry is the exact ledger entry: the event's canonical JSON.
	Entry string `json:"entry"`
	// Proof is the C2SP tlog-proof of the entry.
	Proof string `json:"proof"`
}

// Policy is a policy bundle's source and the hash it must load to.
type Policy struct {
	Hash   string `json:"hash"`
	Source string `json:"source"`
}

// Trust holds the public keys and names a verifier trusts.
type Trust struct {
	V   string `json:"v"`
	Log struct {
		Origin string `json:"origin"`
		// Key is the log's checkpoint verifier key in signed-note text form
		// ("<name>+<hash>+<base64>").
		Key string `json:"key"`
	} `json:"log"`
	// GrantKeys maps key ids to base64 (standard) Ed25519 public keys.
	GrantKeys map[string]string `json:"grant_keys"`
	Issuer    string            `json:"issuer"`
	Enforcer  string            `json:"enforcer"`
	// Witnesses are the cosignature/v1 verifier keys of the witnesses of
	// the log; when set, a checkpoint counts only with Quorum of their
	// cosignatures.
	Witnesses []string `json:"witnesses,omitempty"`
	Quorum    int      `json:"quorum,omitempty"`
}

// ParseBundle decodes a bundle strictly: unknown fields, trailing data and
// oversize input are errors.
func ParseBundle(r io.Reader) (*Bundle, error) {
	var b Bundle
	if err := decodeStrict(r, &b); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if b.V != BundleVersion {
		return nil, fmt.Errorf("bundle: version %q is not %q", b.V, BundleVersion)
	}
	if len(b.Events) == 0 {
		return nil, errors.New("bundle: no events")
	}
	return &b, nil
}

// ParseTrust decodes a trust file strictly.
func ParseTrust(r io.Reader) (*Trust, error) {
	var t Trust
	if err := decodeStrict(r, &t); err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	if t.V != TrustVersion {
		return nil, fmt.Errorf("trust: version %q is not %q", t.V, TrustVersion)
	}
	if t.Log.Key == "" || len(t.GrantKeys) == 0 {
		return nil, errors.New("trust: needs log.key and at least one grant key")
	}
	return &t, nil
}

// GrantPublicKeys decodes the trust file's grant keys.
func (t *Trust) GrantPublicKeys() (map[string]ed25519.PublicKey, error) {
	out := make(map[string]ed25519.PublicKey, len(t.GrantKeys))
	for kid, s := range t.GrantKeys {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("trust: grant key %q is not a base64 Ed25519 public key", kid)
		}
		out[kid] = ed25519.PublicKey(raw)
	}
	return out, nil
}

func decodeStrict(r io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, MaxBundleBytes+1))
	if err != nil {
		return err
	}
	if len(data) > MaxBundleBytes {
		return fmt.Errorf("larger than %d bytes", MaxBundleBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}
