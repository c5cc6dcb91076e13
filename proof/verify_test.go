package proof_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// fixture runs `echo hello` through a real embedded gateway and returns its
// evidence bundle and the home's trust file.
func fixture(t *testing.T) (*proof.Bundle, *proof.Trust, *gateway.Gateway) {
	t.Helper()
	ctx := context.Background()
	gw, err := gateway.Open(ctx, t.TempDir(), gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	var out bytes.Buffer
	res, err := gw.Exec(ctx, gateway.ExecRequest{Argv: []string{"echo", "hello"}, Cwd: t.TempDir(), Stdout: &out, Stderr: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "hello\n" {
		t.Fatalf("exec: %v %+v %q", err, res, out.String())
	}
	b, err := gw.Evidence(ctx, res.Execution.ID)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := gw.Trust()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proof.Verify(ctx, b, tr); err != nil {
		t.Fatalf("fresh bundle does not verify: %v", err)
	}
	return b, tr, gw
}

func clone(t *testing.T, b *proof.Bundle) *proof.Bundle {
	raw, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := proof.ParseBundle(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustFail(t *testing.T, b *proof.Bundle, tr *proof.Trust, check string) {
	t.Helper()
	_, err := proof.Verify(context.Background(), b, tr)
	var pe *proof.Error
	if !errors.As(err, &pe) {
		t.Fatalf("verification passed or failed oddly (%v); want a %s failure", err, check)
	}
	if check != "" && pe.Check != check {
		t.Fatalf("failed %s (%s), want %s", pe.Check, pe.Detail, check)
	}
}

func TestVerifyRejectsEveryAlteredDroppedDuplicatedOrReorderedEvent(t *testing.T) {
	b, tr, _ := fixture(t)
	n := len(b.Events)
	if n != 5 {
		t.Fatalf("echo produced %d events, want intent, decision, grant, start, end", n)
	}
	for i := 0; i < n; i++ {
		// Altered: one byte of the entry changes (kept valid JSON where possible).
		c := clone(t, b)
		c.Events[i].Entry = strings.Replace(c.Events[i].Entry, `"seq":`, `"seq": `, 1)
		mustFail(t, c, tr, proof.CheckInclusion)
		// Altered and re-proved against nothing: body value changed.
		c = clone(t, b)
		c.Events[i].Entry = strings.Replace(c.Events[i].Entry, `"time":"2`, `"time":"1`, 1)
		mustFail(t, c, tr, proof.CheckInclusion)
		// Dropped.
		c = clone(t, b)
		c.Events = append(c.Events[:i:i], c.Events[i+1:]...)
		mustFail(t, c, tr, "")
		// Duplicated.
		c = clone(t, b)
		c.Events = append(c.Events[:i+1:i+1], c.Events[i:]...)
		mustFail(t, c, tr, "")
		// Reordered with the next one.
		if i+1 < n {
			c = clone(t, b)
			c.Events[i], c.Events[i+1] = c.Events[i+1], c.Events[i]
			mustFail(t, c, tr, "")
		}
	}
	// Dropping the end event leaves a chain with no terminal event.
	c := clone(t, b)
	c.Events = c.Events[:n-1]
	mustFail(t, c, tr, proof.CheckOrder)
}

func TestVerifyRejectsInclusionProofForAnotherIndex(t *testing.T) {
	b, tr, _ := fixture(t)
	c := clone(t, b)
	c.Events[1].Proof = c.Events[2].Proof
	mustFail(t, c, tr, proof.CheckInclusion)
	// Change the index in the proof text itself.
	c = clone(t, b)
	p, err := ledger.ParseProof([]byte(c.Events[0].Proof))
	if err != nil {
		t.Fatal(err)
	}
	p.Index++
	c.Events[0].Proof = string(p.Marshal())
	mustFail(t, c, tr, proof.CheckInclusion)
}

func TestVerifyRejectsCheckpointSignedByAnotherKey(t *testing.T) {
	b, tr, gw := fixture(t)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ledger.NewSigner(gw.Config().LogOrigin, other)
	if err != nil {
		t.Fatal(err)
	}
	// Same origin, same body, signed by a key the trust file does not hold.
	n, err := note.Open([]byte(b.Checkpoint), note.VerifierList(mustVerifier(t, tr)))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := note.Sign(&note.Note{Text: n.Text}, signer)
	if err != nil {
		t.Fatal(err)
	}
	c := clone(t, b)
	c.Checkpoint = string(forged)
	for i := range c.Events {
		p, _ := ledger.ParseProof([]byte(c.Events[i].Proof))
		p.Checkpoint = forged
		c.Events[i].Proof = string(p.Marshal())
	}
	mustFail(t, c, tr, proof.CheckCheckpoint)

	// A trust file naming another log key refuses the genuine checkpoint.
	vkey, _ := ledger.VerifierKey(gw.Config().LogOrigin, other.Public().(ed25519.PublicKey))
	tr2 := *tr
	tr2.Log.Key = vkey
	mustFail(t, b, &tr2, proof.CheckCheckpoint)
}

func mustVerifier(t *testing.T, tr *proof.Trust) note.Verifier {
	v, err := note.NewVerifier(tr.Log.Key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerifyRejectsGrantFromAnotherKeyOrTampered(t *testing.T) {
	b, tr, gw := fixture(t)
	claims, err := grant.VerifySignature(b.Grants[0], mustGrantKeys(t, tr))
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	// The forger's clock is the genuine grant's iat: the copied nbf then
	// stays within [iat, exp) however long the test has run.
	at := func() time.Time { return time.Unix(claims.IssuedAt, 0) }
	forged, _, err := grant.NewIssuer(other, gw.Config().Issuer, time.Minute, at).Issue(*claims)
	if err != nil {
		t.Fatal(err)
	}
	// The forged token does not hash to what the ledger recorded.
	c := clone(t, b)
	c.Grants = []string{forged}
	mustFail(t, c, tr, proof.CheckGrant)
	// Even if the trust file listed the forger's key under the real key id
	// … the ledger's token hash still pins the genuine grant.
	tr2 := *tr
	tr2.GrantKeys = map[string]string{}
	for kid := range tr.GrantKeys {
		tr2.GrantKeys[kid] = b64(other.Public().(ed25519.PublicKey))
	}
	mustFail(t, b, &tr2, proof.CheckGrant)
	// No grant at all.
	c = clone(t, b)
	c.Grants = nil
	mustFail(t, c, tr, proof.CheckGrant)
}

func TestVerifyRejectsSubstitutedPolicy(t *testing.T) {
	b, tr, _ := fixture(t)
	permissive := "version: etb.policy/v1\nname: anything-goes\nrules:\n  - id: all\n    effect: permit\n"
	pb, err := policy.Load([]byte(permissive))
	if err != nil {
		t.Fatal(err)
	}
	c := clone(t, b)
	c.Policies = []proof.Policy{{Hash: b.Policies[0].Hash, Source: permissive}}
	mustFail(t, c, tr, proof.CheckPolicy)
	c = clone(t, b)
	c.Policies = []proof.Policy{{Hash: pb.Hash(), Source: permissive}}
	mustFail(t, c, tr, proof.CheckPolicy)
}

// A gateway that lies — it records a permit the policy does not give, and
// signs everything properly — is caught by re-deriving the decision.
func TestVerifyRederivesDecisionFromPolicy(t *testing.T) {
	ctx := context.Background()
	_, tr, gw := fixture(t)
	a := action.Action{ID: action.NewID(time.Now()), Time: action.FormatTime(time.Now()),
		Principal: action.Principal{ID: "spiffe://etb.local/user/1"},
		Action:    action.Spec{Kind: action.KindShellExec, Name: "rm", Args: []string{"-rf", "/"}, Target: action.Target{Program: "/usr/bin/rm"}}}
	if err := a.Normalize(); err != nil {
		t.Fatal(err)
	}
	a.Task.ID, a.Task.RootID = a.ID, a.ID
	dg, _ := a.Action.Digest()
	honest := gw.Policy().Evaluate(ctx, &a)
	if honest.Decision != policy.Deny {
		t.Fatalf("default policy gives %s for rm -rf /", honest.Decision)
	}
	lie := honest
	lie.Decision, lie.Rules, lie.Messages = policy.Permit, []string{"allow-read-only"}, []string{"looks fine"}
	ch := lineage.NewChain(a.ID, a.ID, "")
	var entries [][]byte
	for _, ev := range []struct {
		typ  string
		body any
	}{{lineage.TypeIntent, lineage.IntentBody{Action: a, ActionDigest: dg}}, {lineage.TypeDecision, lie},
		{lineage.TypeInterrupt, lineage.InterruptBody{Reason: "start_failed"}}} {
		_, raw, err := ch.Next(ev.typ, "x", action.FormatTime(time.Now()), ev.body)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, raw)
	}
	first, err := gw.Log().Append(ctx, entries...)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := gw.Log().Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := gw.PolicySource(ctx, honest.Policy.BundleHash)
	b := &proof.Bundle{V: proof.BundleVersion, Execution: a.ID, Checkpoint: string(cp.Note),
		Policies: []proof.Policy{{Hash: honest.Policy.BundleHash, Source: string(src)}}}
	for i, e := range entries {
		p, err := gw.Log().ProveEntry(ctx, first+uint64(i), cp)
		if err != nil {
			t.Fatal(err)
		}
		b.Events = append(b.Events, proof.Entry{Entry: string(e), Proof: string(p)})
	}
	mustFail(t, b, tr, proof.CheckDecision)
}

func TestParseBundleRejectsBadInput(t *testing.T) {
	for name, in := range map[string]string{
		"empty":         ``,
		"not json":      `hello`,
		"unknown field": `{"v":"etb.bundle/v1","execution":"x","events":[{"entry":"","proof":""}],"extra":1}`,
		"wrong version": `{"v":"etb.bundle/v0","execution":"x","events":[{"entry":"","proof":""}]}`,
		"no events":     `{"v":"etb.bundle/v1","execution":"x","events":[]}`,
		"trailing":      `{"v":"etb.bundle/v1","execution":"x","events":[{"entry":"","proof":""}]} x`,
	} {
		if _, err := proof.ParseBundle(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseBundle(f *testing.F) {
	seed, _ := os.ReadFile("testdata/bundle.json")
	if len(seed) > 0 {
		f.Add(seed)
	}
	f.Add([]byte(`{"v":"etb.bundle/v1","execution":"x","checkpoint":"","events":[{"entry":"{}","proof":"c2sp.org/tlog-proof@v1\nindex 0\n\n"}],"grants":[],"policies":[]}`))
	f.Add([]byte(`{"v":"etb.bundle/v1","execution":"","task":"t","checkpoint":"","events":[{"entry":"{}","proof":"c2sp.org/tlog-proof@v1\nindex 0\n\n"}],"grants":["a.b.c"],"policies":[]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := proof.ParseBundle(bytes.NewReader(in))
		if err != nil {
			return
		}
		tr := &proof.Trust{V: proof.TrustVersion, GrantKeys: map[string]string{"k": b64(make([]byte, 32))}}
		tr.Log.Key = "etb.local/log/x+01234567+AQ=="
		// Whatever the bundle says, verification must fail (nothing is
		// signed by this trust) and never panic.
		if _, err := proof.Verify(context.Background(), b, tr); err == nil {
			t.Fatal("fuzzed bundle verified")
		}
	})
}

func mustGrantKeys(t *testing.T, tr *proof.Trust) map[string]ed25519.PublicKey {
	k, err := tr.GrantPublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
