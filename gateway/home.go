package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/policy"
)

// ConfigVersion is the value of the "v" field of config.json.
const ConfigVersion = "etb.config/v1"

// Config is the home's config.json. It is written once by Init; an operator
// may edit it (for example the grant lifetime) between runs.
type Config struct {
	V           string          `json:"v"`
	TrustDomain string          `json:"trust_domain"`
	LogOrigin   string          `json:"log_origin"`
	Issuer      string          `json:"issuer"`
	Enforcer    string          `json:"enforcer"`
	GrantTTL    action.Duration `json:"grant_ttl"`
	ClockSkew   action.Duration `json:"clock_skew"`
	// Witnessing, when set, names the witnesses that cosign the log's
	// checkpoints and the quorum a checkpoint needs to count as published.
	Witnessing *Witnessing `json:"witnessing,omitempty"`
}

// Home is the layout of an etb home directory (~/.etb by default).
type Home struct{ Dir string }

func (h Home) ConfigPath() string   { return filepath.Join(h.Dir, "config.json") }
func (h Home) PolicyPath() string   { return filepath.Join(h.Dir, "policy.yaml") }
func (h Home) DBPath() string       { return filepath.Join(h.Dir, "etb.db") }
func (h Home) GrantKeyPath() string { return filepath.Join(h.Dir, "keys", "grant.key") }
func (h Home) LogKeyPath() string   { return filepath.Join(h.Dir, "keys", "log.key") }

// DefaultHome returns $ETB_HOME, or ~/.etb.
func DefaultHome() (string, error) {
	if d := os.Getenv("ETB_HOME"); d != "" {
		return d, nil
	}
	u, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("gateway: no home directory for ~/.etb (set ETB_HOME or --home): %w", err)
	}
	return filepath.Join(u, ".etb"), nil
}

// Initialized reports whether h holds a config.
func (h Home) Initialized() bool {
	_, err := os.Stat(h.ConfigPath())
	return err == nil
}

// Init creates the home if it does not exist yet: config, signing keys and
// the default policy. It is safe against concurrent first use by several
// processes (an exclusive lock on the directory) and never overwrites an
// existing file. It reports whether it created anything.
func (h Home) Init(ctx context.Context) (created bool, err error) {
	if err := os.MkdirAll(filepath.Join(h.Dir, "keys"), 0o700); err != nil {
		return false, fmt.Errorf("gateway: create home %s: %w", h.Dir, err)
	}
	unlock, err := lockFile(filepath.Join(h.Dir, ".init.lock"))
	if err != nil {
		return false, err
	}
	defer unlock()
	if h.Initialized() {
		return false, nil
	}
	for _, p := range []string{h.GrantKeyPath(), h.LogKeyPath()} {
		if _, err := os.Stat(p); err == nil {
			continue
		}
		k, err := identity.GenerateKey()
		if err != nil {
			return false, err
		}
		if err := identity.WriteKey(p, k); err != nil {
			return false, err
		}
	}
	if _, err := os.Stat(h.PolicyPath()); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(h.PolicyPath(), policy.DefaultPolicy, 0o644); err != nil {
			return false, err
		}
	}
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return false, err
	}
	td := "etb.local"
	cfg := Config{
		V:           ConfigVersion,
		TrustDomain: td,
		LogOrigin:   "etb.local/log/" + hex.EncodeToString(id[:]),
		Issuer:      "spiffe://" + td + "/gateway/local",
		Enforcer:    "spiffe://" + td + "/enforcer/local",
		GrantTTL:    action.Duration(60 * time.Second),
		ClockSkew:   action.Duration(5 * time.Second),
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return false, err
	}
	if err := writeFileAtomic(h.ConfigPath(), append(b, '\n'), 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// LoadConfig reads and checks config.json.
func (h Home) LoadConfig() (Config, error) {
	b, err := os.ReadFile(h.ConfigPath())
	if err != nil {
		return Config{}, fmt.Errorf("gateway: read config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("gateway: config %s: %w", h.ConfigPath(), err)
	}
	if c.V != ConfigVersion {
		return Config{}, fmt.Errorf("gateway: config %s has version %q, want %q", h.ConfigPath(), c.V, ConfigVersion)
	}
	if c.LogOrigin == "" || c.Issuer == "" || c.Enforcer == "" || c.TrustDomain == "" {
		return Config{}, fmt.Errorf("gateway: config %s lacks trust_domain, log_origin, issuer or enforcer", h.ConfigPath())
	}
	if c.GrantTTL <= 0 || c.GrantTTL.D() > 10*time.Minute {
		return Config{}, fmt.Errorf("gateway: config grant_ttl %s must be in (0, 10m]", c.GrantTTL.D())
	}
	if w := c.Witnessing; w != nil && (w.Quorum < 1 || w.Quorum > len(w.Witnesses)) {
		return Config{}, fmt.Errorf("gateway: config witnessing.quorum %d must be between 1 and the %d witnesses", w.Quorum, len(w.Witnesses))
	}
	if c.ClockSkew.D() > 2*time.Minute {
		return Config{}, fmt.Errorf("gateway: config clock_skew %s is over 2m", c.ClockSkew.D())
	}
	return c, nil
}

// keys reads the grant and log signing keys.
func (h Home) keys() (grantKey, logKey ed25519.PrivateKey, err error) {
	if grantKey, err = identity.ReadKey(h.GrantKeyPath()); err != nil {
		return nil, nil, err
	}
	if logKey, err = identity.ReadKey(h.LogKeyPath()); err != nil {
		return nil, nil, err
	}
	return grantKey, logKey, nil
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("gateway: lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("gateway: lock %s: %w", path, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("gateway: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("gateway: write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("gateway: sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// Link, not rename: link fails if the target exists, so nothing is overwritten.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("gateway: write %s: %w", path, err)
	}
	return nil
}
