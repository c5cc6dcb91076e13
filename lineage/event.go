// Package lineage defines etb.event/v1 and the per-execution hash chain.
//
// Every step of an execution (intent, decision, grant, start, heartbeat,
// interrupt, end) is one event; each event names the hash of the event before
// it in the same execution, so dropping, inserting, altering or reordering an
// event breaks the chain. The package owns the event shape, its canonical
// bytes (RFC 8785, which is also the ledger entry) and the chain rules. It
// must never decide anything: it records what other layers decided.
package lineage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/etbproject/etb/action"
)

// Version is the value of the "v" field of every event.
const Version = "etb.event/v1"

// MaxEventBytes bounds the canonical size of one event (one ledger entry):
// 65,535 bytes, the most a C2SP tlog-tiles entry bundle can frame.
const MaxEventBytes = 1<<16 - 1

// Event types.
const (
	TypeIntent     = "intent"
	TypeDecision   = "decision"
	TypeGrant      = "grant"
	TypeApproval   = "approval"
	TypeStart      = "start"
	TypeHeartbeat  = "heartbeat"
	TypeInterrupt  = "interrupt"
	TypeEnd        = "end"
	TypeRevocation = "revocation"
	// TypeEgress records one connection attempt of a sandboxed command
	// through the egress proxy, allowed or denied.
	TypeEgress = "egress"
)

var knownTypes = map[string]bool{
	TypeIntent: true, TypeDecision: true, TypeGrant: true, TypeApproval: true, TypeStart: true,
	TypeHeartbeat: true, TypeInterrupt: true, TypeEnd: true, TypeRevocation: true, TypeEgress: true,
}

// Event is one lineage event. Body is type-specific (see the *Body types);
// it carries digests and statuses, never large payloads.
type Event struct {
	V         string          `json:"v"`
	Type      string          `json:"type"`
	Execution string          `json:"execution"`
	Task      string          `json:"task"`
	Parent    string          `json:"parent"`
	Seq       int64           `json:"seq"`
	Prev      string          `json:"prev"`
	Time      string          `json:"time"`
	Actor     string          `json:"actor"`
	Body      json.RawMessage `json:"body"`
}

// Canonical returns the event's RFC 8785 bytes: the ledger entry.
func (e *Event) Canonical() ([]byte, error) {
	b, err := action.Canonical(e)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxEventBytes {
		return nil, fmt.Errorf("lineage: %s event of execution %s is %d bytes, over the %d-byte limit", e.Type, e.Execution, len(b), MaxEventBytes)
	}
	return b, nil
}

// Hash returns the event hash that the next event's Prev must name.
func (e *Event) Hash() (string, error) {
	b, err := e.Canonical()
	if err != nil {
		return "", err
	}
	return action.SHA256(b), nil
}

// Parse decodes one ledger entry into an event, strictly: unknown fields,
// trailing data, a wrong version or an unknown type are errors, and the
// entry must already be in canonical form (so that the bytes in the log and
// the event a verifier reasons about cannot differ).
func Parse(entry []byte) (*Event, error) {
	dec := json.NewDecoder(bytes.NewReader(entry))
	dec.DisallowUnknownFields()
	var e Event
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("lineage: parse event: %w", err)
	}
	if dec.More() {
		return nil, errors.New("lineage: parse event: trailing data")
	}
	if e.V != Version {
		return nil, fmt.Errorf("lineage: event version %q is not %q", e.V, Version)
	}
	if !knownTypes[e.Type] {
		return nil, fmt.Errorf("lineage: unknown event type %q", e.Type)
	}
	c, err := e.Canonical()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(c, entry) {
		return nil, fmt.Errorf("lineage: %s event seq %d of execution %s is not in canonical form", e.Type, e.Seq, e.Execution)
	}
	return &e, nil
}

// DecodeBody decodes the body strictly into v.
func (e *Event) DecodeBody(v any) error {
	dec := json.NewDecoder(bytes.NewReader(e.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("lineage: %s event body: %w", e.Type, err)
	}
	return nil
}

// Chain builds the events of one execution in order, linking each to the
// previous one. It is not safe for concurrent use; an execution has one
// writer.
type Chain struct {
	Execution string
	Task      string
	Parent    string
	seq       int64
	prev      string
}

// NewChain starts the chain of a new execution.
func NewChain(execution, task, parent string) *Chain {
	return &Chain{Execution: execution, Task: task, Parent: parent}
}

// Next returns the next event with the given type, actor, time and body,
// and its canonical bytes. The chain advances only when it succeeds.
func (c *Chain) Next(typ, actor, time string, body any) (*Event, []byte, error) {
	if !knownTypes[typ] {
		return nil, nil, fmt.Errorf("lineage: unknown event type %q", typ)
	}
	raw, err := canonicalBody(body)
	if err != nil {
		return nil, nil, err
	}
	e := &Event{V: Version, Type: typ, Execution: c.Execution, Task: c.Task, Parent: c.Parent,
		Seq: c.seq, Prev: c.prev, Time: time, Actor: actor, Body: raw}
	// raw is canonical already, so the envelope can be written directly
	// (TestEnvelopeIsCanonical checks it equals the full RFC 8785 path).
	b, ok := e.envelope()
	if !ok {
		if b, err = e.Canonical(); err != nil {
			return nil, nil, err
		}
	}
	if len(b) > MaxEventBytes {
		return nil, nil, fmt.Errorf("lineage: %s event of execution %s is %d bytes, over the %d-byte limit", e.Type, e.Execution, len(b), MaxEventBytes)
	}
	c.seq++
	c.prev = action.SHA256(b)
	return e, b, nil
}

// VerifyChain checks that events are one execution's complete chain: the
// same execution, task and parent throughout, seq 0, 1, 2, … with no gap or
// repeat, each Prev naming the hash of the event before it, and the first
// event an intent with an empty Prev.
func VerifyChain(events []*Event) error {
	if len(events) == 0 {
		return errors.New("lineage: chain is empty")
	}
	first := events[0]
	if first.Type != TypeIntent {
		return fmt.Errorf("lineage: chain of %s starts with a %s event, not an intent", first.Execution, first.Type)
	}
	prev := ""
	for i, e := range events {
		if e.Execution != first.Execution || e.Task != first.Task || e.Parent != first.Parent {
			return fmt.Errorf("lineage: event %d belongs to execution %q task %q, not %q task %q", i, e.Execution, e.Task, first.Execution, first.Task)
		}
		if e.Seq != int64(i) {
			return fmt.Errorf("lineage: event %d of %s has seq %d, want %d", i, e.Execution, e.Seq, i)
		}
		if e.Prev != prev {
			return fmt.Errorf("lineage: event seq %d (%s) of %s names prev %q, but the previous event hashes to %q", e.Seq, e.Type, e.Execution, e.Prev, prev)
		}
		h, err := e.Hash()
		if err != nil {
			return err
		}
		prev = h
	}
	return nil
}

// ShortID returns 12 characters of an id for display: for a 32-hex-digit
// identifier (action.NewID), its last 12, which are random (its first 12
// are the time it was made, shared by identifiers made together); for
// anything else, such as a "sha256:" digest, the first 12 of its hex.
// Commands that take an execution or task id accept either end (see
// gateway.ResolveID).
func ShortID(id string) string {
	if len(id) == 32 && strings.Trim(id, "0123456789abcdef") == "" {
		return id[20:]
	}
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// envelopeOverhead is room for an envelope's fields other than the body,
// so that the buffer is not grown and copied: their names and a gateway
// event's values (SPIFFE actor, ids, previous hash, time) come to 250–350
// bytes.
const envelopeOverhead = 384

// envelope writes the canonical (RFC 8785) bytes of e whose Body is
// already canonical: members in the sorted order JCS gives them, strings
// with JCS's minimal escaping. It reports false, and the caller takes the
// general path, for any string that is not valid UTF-8 or a seq outside
// the range JCS writes as a plain integer.
func (e *Event) envelope() ([]byte, bool) {
	if e.Seq < 0 || e.Seq > 1<<53 {
		return nil, false
	}
	b := make([]byte, 0, envelopeOverhead+len(e.Body))
	str := func(key, v string) bool {
		b = append(b, ',', '"')
		b = append(b, key...)
		b = append(b, '"', ':')
		var ok bool
		b, ok = action.AppendString(b, v)
		return ok
	}
	b = append(b, `{"actor":`...)
	var ok bool
	if b, ok = action.AppendString(b, e.Actor); !ok {
		return nil, false
	}
	b = append(b, `,"body":`...)
	b = append(b, e.Body...)
	ok = str("execution", e.Execution) && str("parent", e.Parent) && str("prev", e.Prev)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, e.Seq, 10)
	ok = ok && str("task", e.Task) && str("time", e.Time) && str("type", e.Type) && str("v", e.V)
	b = append(b, '}')
	return b, ok
}

// canonicalBody is action.Canonical(body), written directly for the intent
// body (the largest, on every execution) when its action allows it.
func canonicalBody(body any) ([]byte, error) {
	switch v := body.(type) {
	case IntentBody:
		b, ok := action.AppendCanonical(append(make([]byte, 0, 1024), `{"action":`...), &v.Action)
		if ok {
			b = append(b, `,"action_digest":`...)
			if b, ok = action.AppendString(b, v.ActionDigest); ok {
				return append(b, '}'), nil
			}
		}
	case CanonicalAppender:
		if b, ok := v.AppendCanonical(make([]byte, 0, 512)); ok {
			return b, nil
		}
	}
	return action.Canonical(body)
}

// CanonicalAppender is implemented by event bodies that write their RFC
// 8785 form directly (the generic path re-parses encoding/json's output).
// AppendCanonical reports false when it cannot, and the generic path is
// used; it must otherwise produce exactly what action.Canonical does.
type CanonicalAppender interface {
	AppendCanonical(b []byte) ([]byte, bool)
}
