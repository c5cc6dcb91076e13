package sandbox

import (
	"fmt"
	"os"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// Landlock access rights granted by each allow-list. Write and Exec imply
// read. Rights the running ABI does not handle are dropped from a rule (they
// are then not restricted either).
const (
	rightsRead  = llsys.AccessFSReadFile | llsys.AccessFSReadDir
	rightsWrite = rightsRead | llsys.AccessFSWriteFile | llsys.AccessFSTruncate |
		llsys.AccessFSRemoveDir | llsys.AccessFSRemoveFile | llsys.AccessFSMakeDir |
		llsys.AccessFSMakeReg | llsys.AccessFSMakeSym | llsys.AccessFSMakeSock |
		llsys.AccessFSMakeFifo | llsys.AccessFSRefer | llsys.AccessFSIoctlDev
	rightsExec = rightsRead | llsys.AccessFSExecute

	// rightsFile are the rights that apply to a non-directory.
	rightsFile = llsys.AccessFSExecute | llsys.AccessFSWriteFile | llsys.AccessFSReadFile |
		llsys.AccessFSTruncate | llsys.AccessFSIoctlDev
)

// landlockUnixABI is the first Landlock ABI that controls connecting to
// unix sockets by path (LANDLOCK_ACCESS_FS_RESOLVE_UNIX).
const landlockUnixABI = 9

// landlockABI returns the host's Landlock ABI version, 0 if none.
func landlockABI() int {
	v, err := llsys.LandlockGetABIVersion()
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// abiConfig returns go-landlock's configuration for ABI version v (v >= 1),
// capped at the newest version go-landlock knows.
func abiConfig(v int) landlock.Config {
	known := []landlock.Config{landlock.V1, landlock.V2, landlock.V3, landlock.V4, landlock.V5,
		landlock.V6, landlock.V7, landlock.V8, landlock.V9, landlock.V10, landlock.V11}
	if v > len(known) {
		v = len(known)
	}
	return known[v-1]
}

// landlockRules returns the ruleset for cfg, and false if cfg needs no
// Landlock domain and the host offers no scoping. It fails if cfg needs a
// Landlock feature the host lacks.
func landlockRules(cfg helperConfig, abi int) (landlock.Config, []landlock.Rule, bool, error) {
	fsOn := cfg.Read != nil || cfg.Write != nil || cfg.Exec != nil
	netOn := cfg.Network
	if fsOn && abi < landlockFSABI {
		return landlock.Config{}, nil, false, fmt.Errorf("landlock: filesystem allow-lists need Landlock, host has none")
	}
	if cfg.Proxy && abi < landlockNetABI {
		return landlock.Config{}, nil, false, fmt.Errorf("landlock: network allow-list needs ABI >= %d, host has %d", landlockNetABI, abi)
	}
	if abi < 1 {
		return landlock.Config{}, nil, false, nil
	}
	full := abiConfig(abi)
	var c landlock.Config
	var rules []landlock.Rule
	if fsOn {
		c.HandledAccessFS = full.HandledAccessFS
		for _, l := range []struct {
			paths  []string
			rights landlock.AccessFSSet
		}{{cfg.Read, rightsRead}, {cfg.Write, rightsWrite}, {cfg.Exec, rightsExec}} {
			for _, p := range l.paths {
				fi, err := os.Stat(p)
				if err != nil {
					return landlock.Config{}, nil, false, fmt.Errorf("landlock: %w", err)
				}
				r := l.rights & full.HandledAccessFS
				if !fi.IsDir() {
					r &= rightsFile
				}
				rules = append(rules, landlock.PathAccess(r, p))
			}
		}
	}
	if netOn && abi >= landlockNetABI {
		// TCP bind denied everywhere; connect only to the bridge.
		c.HandledAccessNet = landlock.AccessNetSet(llsys.AccessNetBindTCP | llsys.AccessNetConnectTCP)
		if cfg.Proxy {
			rules = append(rules, landlock.ConnectTCP(ProxyPort))
		}
	}
	// Scoping (ABI 6): no signals to, and no abstract unix sockets of,
	// processes outside the domain (those of the host's network namespace
	// when it is kept). Applied whenever the host has it.
	c.Scoped = full.Scoped
	if c.HandledAccessFS == 0 && c.HandledAccessNet == 0 && c.Scoped == 0 {
		return c, nil, false, nil
	}
	return c, rules, true, nil
}

// landlockRuleset builds the ruleset of cfg and returns its descriptor,
// or -1 if cfg needs no Landlock domain.
func landlockRuleset(cfg helperConfig) (int, error) {
	c, rules, on, err := landlockRules(cfg, landlockABI())
	if err != nil || !on {
		return -1, err
	}
	fd, _, err := c.NewRulesetFD(rules...)
	if err != nil {
		return -1, fmt.Errorf("landlock: %w", err)
	}
	return fd, nil
}
