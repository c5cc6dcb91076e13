package sandbox

import (
	"fmt"
	"os"

	"github.com/etbproject/etb/enforce/sandbox/internal/stage"

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

// landlockRules returns the Landlock part of the helper's configuration
// for the resolved allow-lists read, write and exec (nil: not restricted)
// and the network mode, on a host with Landlock ABI abi. It leaves cfg
// without a ruleset (cfg.Landlock false) if nothing needs one and the host
// offers no scoping, and fails if a required Landlock feature is missing.
// Paths must exist: their kind (file or directory) decides the rights.
func landlockRules(cfg *stage.Config, read, write, exec []string, network, proxy bool, abi int) error {
	fsOn := read != nil || write != nil || exec != nil
	if fsOn && abi < landlockFSABI {
		return fmt.Errorf("landlock: filesystem allow-lists need Landlock, host has none")
	}
	if proxy && abi < landlockNetABI {
		return fmt.Errorf("landlock: network allow-list needs ABI >= %d, host has %d", landlockNetABI, abi)
	}
	if abi < 1 {
		return nil
	}
	full := abiConfig(abi)
	if fsOn {
		cfg.HandledFS = uint64(full.HandledAccessFS)
		for _, l := range []struct {
			paths  []string
			rights landlock.AccessFSSet
		}{{read, rightsRead}, {write, rightsWrite}, {exec, rightsExec}} {
			for _, p := range l.paths {
				fi, err := os.Stat(p)
				if err != nil {
					return fmt.Errorf("landlock: %w", err)
				}
				r := l.rights & full.HandledAccessFS
				if !fi.IsDir() {
					r &= rightsFile
				}
				cfg.PathRules = append(cfg.PathRules, stage.PathRule{Path: p, Access: uint64(r)})
			}
		}
	}
	if network && abi >= landlockNetABI {
		// TCP bind denied everywhere; connect only to the bridge.
		cfg.HandledNet = llsys.AccessNetBindTCP | llsys.AccessNetConnectTCP
		if proxy {
			cfg.PortRules = append(cfg.PortRules, stage.PortRule{Port: ProxyPort, Access: llsys.AccessNetConnectTCP})
		}
	}
	// Scoping (ABI 6): no signals to, and no abstract unix sockets of,
	// processes outside the domain (those of the host's network namespace
	// when it is kept). Applied whenever the host has it.
	cfg.ScopedMask = uint64(full.Scoped)
	cfg.Landlock = cfg.HandledFS != 0 || cfg.HandledNet != 0 || cfg.ScopedMask != 0
	return nil
}
