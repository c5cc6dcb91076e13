package action

import (
	"encoding/json"
	"fmt"
	"time"
)

// Obligations are the conditions a permit is given under. They travel in the
// decision record and in the grant's obl claim, and the enforcer applies them.
// The zero value imposes nothing beyond the enforcer's defaults.
type Obligations struct {
	// Timeout bounds the wall-clock run time; the enforcer kills the whole
	// process tree when it expires.
	Timeout Duration `json:"timeout,omitempty"`
}

// Tighten returns the most restrictive combination of o and p: the smaller of
// two non-zero timeouts.
func (o Obligations) Tighten(p Obligations) Obligations {
	if p.Timeout > 0 && (o.Timeout == 0 || p.Timeout < o.Timeout) {
		o.Timeout = p.Timeout
	}
	return o
}

// Duration is a time.Duration written in JSON and YAML as a Go duration
// string ("30s", "1m30s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler. Only a duration string is
// accepted; a negative duration is an error.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\": %w", err)
	}
	return d.parse(s)
}

// UnmarshalText implements encoding.TextUnmarshaler (used by YAML decoders).
func (d *Duration) UnmarshalText(b []byte) error { return d.parse(string(b)) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}
