package mcp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// sseEvent is one server-sent event.
type sseEvent struct{ id, data string }

// readEvent reads the next event with data from r.
func readEvent(r *bufio.Reader) (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if ev.data != "" {
				return ev, nil
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id:"):
			ev.id = strings.TrimSpace(line[3:])
		case strings.HasPrefix(line, "data:"):
			ev.data += strings.TrimSpace(line[5:])
		}
	}
}

// TestHTTPStreamResumption: a client of protocol 2025-11-25 whose event
// stream of a governed tools/call breaks reconnects with Last-Event-ID and
// gets the progress and the result it missed, through the proxy's own
// listener.
func TestHTTPStreamResumption(t *testing.T) {
	p, _, _, _ := inProcess(t, `version: etb.policy/v1
name: t
rules:
  - id: slow
    effect: permit
    match: {kind: mcp.tool_call, name: counter/slow}
`)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	const version = "2025-11-25"
	session := ""
	post := func(body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
			req.Header.Set("Mcp-Protocol-Version", version)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode/100 != 2 {
			t.Fatalf("POST %s: %s", body, resp.Status)
		}
		return resp
	}
	init := post(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + version + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	session = init.Header.Get("Mcp-Session-Id")
	// Read the answer to its end, as a client does: a stream dropped
	// before the initialize result is written ends the session.
	if b, err := io.ReadAll(init.Body); err != nil || !strings.Contains(string(b), `"result"`) {
		t.Fatalf("initialize answered %q, %v", b, err)
	}
	init.Body.Close()
	if session == "" {
		t.Fatal("no Mcp-Session-Id")
	}
	post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`).Body.Close()

	// The server takes notifications/initialized asynchronously: until it
	// has, a request is refused as made during initialization.
	var call *http.Response
	var r *bufio.Reader
	var first sseEvent
	for deadline := time.Now().Add(5 * time.Second); ; {
		call = post(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","arguments":{},"_meta":{"progressToken":"p"}}}`)
		if ct := call.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Fatalf("tools/call answered %s, want an event stream", ct)
		}
		r = bufio.NewReader(call.Body)
		var err error
		if first, err = readEvent(r); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(first.data, "during session initialization") || time.Now().After(deadline) {
			break
		}
		call.Body.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(first.data, `"progress":1`) || first.id == "" {
		t.Fatalf("first event %+v, want the first progress notification with an id", first)
	}
	call.Body.Close() // the stream breaks

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Until the server has seen the broken stream go, it refuses a second
	// connection to it (409): a client tries again, as here for up to 5 s.
	var resume *http.Response
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Mcp-Session-Id", session)
		req.Header.Set("Mcp-Protocol-Version", version)
		req.Header.Set("Last-Event-ID", first.id)
		var err error
		if resume, err = http.DefaultClient.Do(req); err != nil {
			t.Fatal(err)
		}
		if resume.StatusCode != http.StatusConflict || time.Now().After(deadline) {
			break
		}
		resume.Body.Close()
	}
	defer resume.Body.Close()
	if resume.StatusCode != http.StatusOK {
		t.Fatalf("resume: %s", resume.Status)
	}
	r = bufio.NewReader(resume.Body)
	var got []string
	for {
		ev, err := readEvent(r)
		if err != nil {
			t.Fatalf("resumed stream ended after %q: %v", got, err)
		}
		got = append(got, ev.data)
		var msg struct {
			ID     json.RawMessage `json:"id"`
			Result struct {
				Content []struct{ Text string } `json:"content"`
			} `json:"result"`
		}
		if json.Unmarshal([]byte(ev.data), &msg) == nil && bytes.Equal(msg.ID, []byte("2")) {
			if len(msg.Result.Content) != 1 || msg.Result.Content[0].Text != "slow done" {
				t.Fatalf("result %s", ev.data)
			}
			break
		}
	}
	if len(got) < 2 || strings.Contains(strings.Join(got, " "), `"progress":1,`) {
		t.Errorf("resumed events %q: want the later progress and the result, not the first again", got)
	}
	verifyHome(t, p, 1)
}
