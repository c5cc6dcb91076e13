package etbtest

import (
	"net"
	"testing"
)

func TestStartWaitsForReadyLine(t *testing.T) {
	p := Start(t, "/bin/sh", "ready:", "-c", "echo starting; echo 'ready: yes'; exec sleep 30")
	if p.Cmd.ProcessState != nil {
		t.Fatal("the process exited")
	}
	p.Kill()
	if p.Cmd.ProcessState == nil {
		t.Fatal("Kill did not wait for the process")
	}
}

func TestFreeAddr(t *testing.T) {
	addr := FreeAddr(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("FreeAddr %s is not free: %v", addr, err)
	}
	ln.Close()
}

func TestBuffer(t *testing.T) {
	var b Buffer
	done := make(chan bool)
	go func() {
		for range 100 {
			b.Write([]byte("x"))
		}
		close(done)
	}()
	for range 100 {
		_ = b.String()
	}
	<-done
	if n := len(b.String()); n != 100 {
		t.Fatalf("Buffer holds %d bytes, want 100", n)
	}
}
