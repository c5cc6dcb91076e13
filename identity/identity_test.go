package identity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestLocal(t *testing.T) {
	p, err := Local(context.Background(), "etb.local")
	if err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	if want := "spiffe://etb.local/user/" + strconv.Itoa(uid); p.ID != want {
		t.Errorf("ID = %q, want %q", p.ID, want)
	}
	if p.Attestation != "local-uid" || p.UID != int64(uid) {
		t.Errorf("Attestation %q UID %d, want local-uid %d", p.Attestation, p.UID, uid)
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && p.User != u.Username {
		t.Errorf("User = %q, want %q", p.User, u.Username)
	}
	// The parent of the test binary is the go command (or a shell): same
	// uid, so it is measurable.
	wantExe, err := os.Readlink("/proc/" + strconv.Itoa(os.Getppid()) + "/exe")
	if err != nil {
		t.Fatalf("cannot read the parent's exe link: %v", err)
	}
	if p.Exe != wantExe {
		t.Errorf("Exe = %q, want %q (the parent process, not this one)", p.Exe, wantExe)
	}
	self, _ := os.Executable()
	if p.Exe == self {
		t.Errorf("Exe is this process's executable, want the parent's")
	}
	wantSHA, err := FileSHA256(wantExe)
	if err != nil {
		t.Fatal(err)
	}
	if p.ExeSHA256 != wantSHA {
		t.Errorf("ExeSHA256 = %q, want %q", p.ExeSHA256, wantSHA)
	}
	if p.OnBehalfOf != "" {
		t.Errorf("OnBehalfOf = %q, want empty", p.OnBehalfOf)
	}
}

func TestLocalRefusesBadTrustDomain(t *testing.T) {
	for _, td := range []string{
		"",
		"Etb.local",
		"spiffe://etb.local",
		"etb local",
		"etb.local/user/0",
		"etb.local:8443",
		"user@etb.local",
		"étb.local",
	} {
		t.Run(td, func(t *testing.T) {
			if p, err := Local(context.Background(), td); err == nil {
				t.Fatalf("Local(%q) = %+v, want an error", td, p)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Local(ctx, "etb.local"); err == nil {
		t.Fatal("Local with a cancelled context succeeded")
	}
}

func TestMeasure(t *testing.T) {
	exe, sha, err := Measure(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	self, err = filepath.EvalSymlinks(self)
	if err != nil {
		t.Fatal(err)
	}
	if exe != self {
		t.Errorf("exe = %q, want %q", exe, self)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if want := "sha256:" + hex.EncodeToString(sum[:]); sha != want {
		t.Errorf("sha = %q, want %q", sha, want)
	}

	for _, pid := range []int{0, -1, 1 << 30} {
		if exe, sha, err := Measure(pid); err == nil || exe != "" || sha != "" {
			t.Errorf("Measure(%d) = %q, %q, %v; want an error and nothing measured", pid, exe, sha, err)
		}
	}
	// Another user's process (init) cannot be measured unless we are root;
	// it must then fail, not return a guess.
	if os.Getuid() != 0 {
		if exe, sha, err := Measure(1); err == nil || sha != "" {
			t.Errorf("Measure(1) as uid %d = %q, %q, %v; want an error", os.Getuid(), exe, sha, err)
		}
	}
}

func TestProcStartTime(t *testing.T) {
	a, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, err := procStartTime(os.Getpid())
	if err != nil || a != b || a == 0 {
		t.Fatalf("start time %d then %d (%v)", a, b, err)
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Fatal("start time of a nonexistent process")
	}
}

func TestFileSHA256(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	data := filepath.Join(dir, "data")
	fifo := filepath.Join(dir, "fifo")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	big := []byte(strings.Repeat("etb", 100000))
	if err := os.WriteFile(data, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(big)
	tests := []struct {
		path    string
		want    string
		wantErr bool
	}{
		{empty, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", false},
		{data, "sha256:" + hex.EncodeToString(sum[:]), false},
		{filepath.Join(dir, "missing"), "", true},
		{dir, "", true},
		{"/dev/null", "", true},
	}
	for _, tt := range tests {
		got, err := FileSHA256(tt.path)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("FileSHA256(%s) = %q, %v; want %q, error %v", tt.path, got, err, tt.want, tt.wantErr)
		}
	}
	// A FIFO without a writer would block a plain open; it must be
	// refused promptly instead.
	if got, err := FileSHA256(fifo); err == nil {
		t.Errorf("FileSHA256(fifo) = %q, want an error", got)
	}
}
