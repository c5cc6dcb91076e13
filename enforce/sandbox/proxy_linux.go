package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etbproject/etb/enforce/sandbox/internal/stage"
)

// proxy is the allow-listing egress proxy. It runs in the calling process,
// outside the sandbox, and serves connections handed over by the helper.
type proxy struct {
	allow  map[string]bool // normalised "host:port"
	onConn func(ConnEvent)
	dialer net.Dialer
}

// dialTimeout bounds how long the proxy tries to reach an allowed host.
const dialTimeout = 10 * time.Second

// record reports one attempt to onConn.
func (p *proxy) record(method, target string, allowed bool, err error) {
	if p.onConn == nil {
		return
	}
	ev := ConnEvent{Time: time.Now().UTC(), Method: method, Target: target, Allowed: allowed}
	if err != nil {
		ev.Err = err.Error()
	}
	p.onConn(ev)
}

// maxProxyConns bounds the connections one sandbox may have open through
// the proxy at once; more are closed at once and reported as denied.
const maxProxyConns = 256

var errTooMany = fmt.Errorf("more than %d concurrent proxy connections", maxProxyConns)

// errNotAllowed is the reason given for a destination not on the list.
var errNotAllowed = errors.New("destination not in the network allow-list")

// check normalises hostport and reports whether it is allowed.
func (p *proxy) check(hostport, defaultPort string) (string, error) {
	key, err := normalizeHostPort(hostport, defaultPort)
	if err != nil {
		return hostport, fmt.Errorf("bad destination %q: %w", hostport, err)
	}
	if !p.allow[key] {
		return key, errNotAllowed
	}
	return key, nil
}

// serveControl serves the helper's control socket ours until the helper
// closes it (it exited) or ctx is done. theirs is the descriptor of the
// helper's end, still open in this process until the helper says hello;
// it is then pointed at /dev/null (dup3), not closed: the *os.File that
// holds it belongs to the caller's exec.Cmd, whose Start may still be
// reading it as far as the Go memory model knows (the helper's hello
// happens after the fork, but only the kernel knows that). The File's
// finalizer closes the /dev/null descriptor with it. The helper hands over
// the bridge's listening socket (inside the sandbox's network namespace);
// the proxy accepts the target's connections on it until serveControl
// returns.
func (p *proxy) serveControl(ctx context.Context, ours *os.File, theirs int) {
	var closeTheirs sync.Once
	release := func() {
		if null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			unix.Dup3(null, theirs, unix.O_CLOEXEC)
			unix.Close(null)
		}
	}
	defer closeTheirs.Do(release)
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return
	}
	ctl, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return
	}
	stop := context.AfterFunc(ctx, func() { ctl.Close() })
	defer stop()
	defer ctl.Close()
	var bridge net.Listener
	defer func() {
		if bridge != nil {
			bridge.Close()
		}
	}()
	buf := make([]byte, 1)
	oob := make([]byte, 64)
	for {
		n, oobn, _, _, err := ctl.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return // helper gone (EOF), or ctx done
		}
		if buf[0] == stage.MsgHello {
			closeTheirs.Do(release)
		}
		for _, fd := range parseRights(oob[:oobn]) {
			f := os.NewFile(uintptr(fd), "etb-sandbox-bridge")
			if buf[0] != stage.MsgListener || bridge != nil {
				f.Close() // one listener, nothing else
				continue
			}
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				p.record("", "", false, fmt.Errorf("egress bridge: %w", err))
				continue
			}
			bridge = ln
			go p.accept(ctx, ln)
		}
	}
}

// accept serves the connections accepted on the bridge ln, at most
// maxProxyConns at once, until ln is closed.
func (p *proxy) accept(ctx context.Context, ln net.Listener) {
	sem := make(chan struct{}, maxProxyConns)
	for {
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors or the like: the client waits in
			// the backlog.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case sem <- struct{}{}:
			go func() {
				defer func() { <-sem }()
				p.serveConn(ctx, conn)
			}()
		default:
			p.record("", "", false, errTooMany)
			conn.Close()
		}
	}
}

// serveConn serves one client connection: a CONNECT tunnel, or one plain
// HTTP request in absolute form.
func (p *proxy) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(dialTimeout))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	if req.Method == http.MethodConnect {
		p.connect(ctx, c, br, req)
		return
	}
	p.forward(ctx, c, req)
}

// reply writes a short proxy error response.
func reply(c net.Conn, code int, msg string) {
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(msg)+1, msg+"\n")
}

// connect serves a CONNECT request: check, dial, then tunnel bytes.
func (p *proxy) connect(ctx context.Context, c net.Conn, br *bufio.Reader, req *http.Request) {
	target, err := p.check(req.RequestURI, "")
	if err != nil {
		p.record(req.Method, target, false, err)
		reply(c, http.StatusForbidden, "etb: "+err.Error())
		return
	}
	up, err := p.dial(ctx, target)
	p.record(req.Method, target, true, err)
	if err != nil {
		reply(c, http.StatusBadGateway, "etb: "+err.Error())
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	pipe(c, up)
}

// forward serves one plain HTTP request sent in absolute form.
func (p *proxy) forward(ctx context.Context, c net.Conn, req *http.Request) {
	if req.URL == nil || !req.URL.IsAbs() || req.URL.Scheme != "http" || req.URL.Host == "" {
		p.record(req.Method, req.RequestURI, false, errors.New("not an absolute http:// request"))
		reply(c, http.StatusBadRequest, "etb: proxy requests must be CONNECT or absolute http:// URLs")
		return
	}
	target, err := p.check(req.URL.Host, "80")
	if err != nil {
		p.record(req.Method, target, false, err)
		reply(c, http.StatusForbidden, "etb: "+err.Error())
		return
	}
	up, err := p.dial(ctx, target)
	p.record(req.Method, target, true, err)
	if err != nil {
		reply(c, http.StatusBadGateway, "etb: "+err.Error())
		return
	}
	defer up.Close()
	// The Host header must name the checked destination: a different one
	// could reach another site behind the same address.
	req.Host = req.URL.Host
	req.Header.Del("Proxy-Connection")
	req.Header.Del("Proxy-Authorization")
	req.Close = true
	if err := req.Write(up); err != nil {
		reply(c, http.StatusBadGateway, "etb: "+err.Error())
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(up), req)
	if err != nil {
		reply(c, http.StatusBadGateway, "etb: "+err.Error())
		return
	}
	defer resp.Body.Close()
	resp.Close = true
	resp.Write(c)
}

// dial connects to target ("host:port", already allowed), resolving the
// name here, outside the sandbox.
func (p *proxy) dial(ctx context.Context, target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	return p.dialer.DialContext(ctx, "tcp", target)
}

// pipe copies a to b and b to a, half-closing each side as its source ends.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		io.Copy(b, a)
		closeWrite(b)
		close(done)
	}()
	io.Copy(a, b)
	closeWrite(a)
	<-done
}

// closeWrite half-closes c if it supports it, else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
