package enforce

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/etbproject/etb/action"
	"golang.org/x/sys/unix"
)

// DescribeExec resolves argv[0] like a shell and returns the normalised
// action.Spec of kind shell.exec for running argv in cwd.
//
// A name without a slash is looked up in $PATH (exec.LookPath); a lookup that
// only succeeds through a relative $PATH entry is refused. A name with a slash
// is taken relative to cwd, as a shell started in cwd would. The result is
// made absolute and its symlinks are resolved; the executable's contents are
// hashed. An empty cwd means the current working directory; cwd is made
// absolute with its symlinks resolved.
//
// The spec has Name = filepath.Base(argv[0]) as typed, Args = argv[1:],
// ArgsHash filled, and Target{Program, ProgramSHA256, Argv (a copy of argv),
// Cwd}. An empty argv, a missing program, a directory, a non-regular or a
// non-executable file is an error naming it.
func DescribeExec(argv []string, cwd string) (action.Spec, error) {
	spec, f, err := describe(argv, cwd)
	if f != nil {
		f.Close()
	}
	return spec, err
}

// OpenExec is DescribeExec that keeps the executable open: the hash in the
// spec is the hash of what was read from the returned file, so a caller
// that executes that file (as /proc/self/fd/N, or sandbox.CommandFile)
// runs exactly what was described, whatever happens to the path
// afterwards. The caller closes it.
func OpenExec(argv []string, cwd string) (action.Spec, *os.File, error) {
	return describe(argv, cwd)
}

// describe is DescribeExec that also returns the executable, open for
// reading, positioned after its contents: the hash in the spec is the hash
// of what was read from this open file. The caller closes it. On error the
// returned file is nil.
func describe(argv []string, cwd string) (action.Spec, *os.File, error) {
	if len(argv) == 0 || argv[0] == "" {
		return action.Spec{}, nil, errors.New("enforce: describe: empty argv")
	}
	dir, err := resolveDir(cwd)
	if err != nil {
		return action.Spec{}, nil, err
	}
	prog, err := resolveProgram(argv[0], dir)
	if err != nil {
		return action.Spec{}, nil, err
	}
	f, sum, err := openAndHash(prog)
	if err != nil {
		return action.Spec{}, nil, err
	}
	args := append([]string{}, argv[1:]...)
	argsHash, err := action.HashArgs(args)
	if err != nil {
		f.Close()
		return action.Spec{}, nil, fmt.Errorf("enforce: describe %q: %w", argv[0], err)
	}
	spec := action.Spec{
		Kind:     action.KindShellExec,
		Name:     filepath.Base(argv[0]),
		Args:     args,
		ArgsHash: argsHash,
		Target: action.Target{
			Program:       prog,
			ProgramSHA256: sum,
			Argv:          append([]string{}, argv...),
			Cwd:           dir,
			Paths:         []string{},
		},
	}
	return spec, f, nil
}

// resolveDir returns cwd (or the working directory if cwd is empty) as an
// absolute path with symlinks resolved, checking that it is a directory.
func resolveDir(cwd string) (string, error) {
	if cwd == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("enforce: working directory: %w", err)
		}
		cwd = wd
	}
	abs, err := filepath.Abs(cwd)
	if err != nil {
		return "", fmt.Errorf("enforce: cwd %q: %w", cwd, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("enforce: cwd %q: %w", cwd, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("enforce: cwd %q: %w", cwd, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("enforce: cwd %q is not a directory", cwd)
	}
	return real, nil
}

// resolveProgram resolves name as a shell started in dir would and returns
// the absolute, symlink-free path of a regular executable file.
func resolveProgram(name, dir string) (string, error) {
	var p string
	if strings.Contains(name, "/") {
		p = name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
	} else {
		found, err := exec.LookPath(name)
		if err != nil {
			// exec.ErrDot (found only via a relative $PATH entry, which
			// would be relative to our cwd, not dir) is refused too.
			return "", fmt.Errorf("enforce: program %q: %w", name, err)
		}
		p = found
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("enforce: program %q: %w", name, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("enforce: program %q: %w", name, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("enforce: program %q: %w", name, err)
	}
	switch {
	case fi.IsDir():
		return "", fmt.Errorf("enforce: program %q (%s) is a directory", name, real)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("enforce: program %q (%s) is not a regular file (mode %v)", name, real, fi.Mode())
	case fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("enforce: program %q (%s) is not executable (mode %v)", name, real, fi.Mode())
	}
	if err := unix.Access(real, unix.X_OK); err != nil {
		return "", fmt.Errorf("enforce: program %q (%s) is not executable by this user: %w", name, real, err)
	}
	return real, nil
}

// openAndHash opens path and returns the open file and "sha256:<hex>" of
// the contents read from it. The file must still be a regular file once
// open (it may have been swapped since resolveProgram looked at it).
func openAndHash(path string) (*os.File, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("enforce: program %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("enforce: program %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		f.Close()
		return nil, "", fmt.Errorf("enforce: program %s is not a regular executable file (mode %v)", path, fi.Mode())
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("enforce: hashing program %s: %w", path, err)
	}
	return f, "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
