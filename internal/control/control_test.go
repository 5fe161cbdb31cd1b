package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, h Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "control")
	ln, gid, err := Listen(path, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ln, gid, h) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

func TestCall(t *testing.T) {
	path := serve(t, func(r Request) (any, error) {
		switch r.Cmd {
		case "status":
			return map[string]int{"instances": 3}, nil
		case "end":
			if r.Reason == "" {
				return nil, errors.New("give a reason")
			}
			return "ok", nil
		}
		return nil, errors.New("unknown command " + r.Cmd)
	})
	st, err := os.Stat(path)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v: want a 0600 socket without a group", st, err)
	}
	var out map[string]int
	if err := Call(path, Request{Cmd: "status"}, &out, 5*time.Second); err != nil || out["instances"] != 3 {
		t.Errorf("status = %v, %v", out, err)
	}
	if err := Call(path, Request{Cmd: "end", ID: "i-1"}, nil, 5*time.Second); err == nil || err.Error() != "give a reason" {
		t.Errorf("end without reason: %v", err)
	}
	if err := Call(filepath.Join(t.TempDir(), "none"), Request{Cmd: "status"}, nil, time.Second); err == nil || !strings.Contains(err.Error(), "is bentod running") {
		t.Errorf("no socket: %v", err)
	}
	// A second bentod on the same path is refused, not let to steal it.
	if _, _, err := Listen(path, ""); err == nil || !strings.Contains(err.Error(), "another bentod answers") {
		t.Errorf("second Listen: %v", err)
	}
}

func TestHostileRequests(t *testing.T) {
	path := serve(t, func(r Request) (any, error) { return "ok", nil })
	for _, tc := range []struct{ send, want string }{
		{strings.Repeat("x", MaxRequest+10) + "\n", "request longer than"},
		{"{\"cmd\":\"status\",\"evil\":1}\n", "unknown field"},
		{"not json\n", "bad request"},
		{"{\"cmd\":\"status\"}", "not ended by a newline"},
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(tc.send))
		if !strings.HasSuffix(tc.send, "\n") {
			c.(*net.UnixConn).CloseWrite()
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.Contains(line, tc.want) {
			t.Errorf("%.40q: answer %q, want %q", tc.send, line, tc.want)
		}
	}
	// Connections beyond MaxConns are told so and closed; the rest are
	// served once the hogs go.
	var hogs []net.Conn
	for range MaxConns {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, c)
	}
	time.Sleep(100 * time.Millisecond)
	c, _ := net.Dial("unix", path)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.Contains(line, "busy") {
		t.Errorf("connection over the cap: %q", line)
	}
	for _, h := range hogs {
		h.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if err := Call(path, Request{Cmd: "status"}, nil, 5*time.Second); err != nil {
		t.Errorf("after the hogs left: %v", err)
	}
}

func FuzzServeRequest(f *testing.F) {
	f.Add([]byte("{\"cmd\":\"end\",\"id\":\"i-1\",\"reason\":\"abuse\"}\n"))
	f.Add([]byte("{\"cmd\":\"drain\",\"on\":true}\n{\"cmd\":\"status\"}\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), 512)
		for {
			line, err := readLine(r)
			if err != nil {
				if len(line) != 0 {
					t.Fatal("a line with an error")
				}
				return
			}
			if len(line) > MaxRequest {
				t.Fatalf("a line of %d bytes", len(line))
			}
			resp, fatal := process(line, func(r Request) (any, error) {
				if r.Cmd == "" {
					return nil, errors.New("no command")
				}
				return r, nil
			})
			if fatal != (resp.Error != "" && strings.HasPrefix(resp.Error, "bad request")) {
				t.Fatalf("%q: fatal %v with %+v", line, fatal, resp)
			}
			if _, err := json.Marshal(resp); err != nil {
				t.Fatal(err)
			}
			if fatal {
				return
			}
		}
	})
}

// TestListenRefuses: Listen never removes what is not a socket, never
// trusts a directory others can write, and names a group that is not
// there.
func TestListenRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bentorc")
	os.WriteFile(file, []byte("keep me"), 0o644)
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	for _, tc := range []struct{ path, group, want string }{
		{file, "", "not a socket"},
		{filepath.Join(open, "control"), "", "writable by everyone"},
		{filepath.Join(dir, "control"), "no-such-group-bento", `ControlSocketGroup "no-such-group-bento"`},
	} {
		if ln, _, err := Listen(tc.path, tc.group); err == nil || !strings.Contains(err.Error(), tc.want) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%s, %q) = %v, want an error with %q", tc.path, tc.group, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Error("Listen removed a file that was not a socket")
	}
	// With a group: 0660 and that group, the directory it made too.
	sock := filepath.Join(dir, "grp", "control")
	ln, gid, err := Listen(sock, "root")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	st, _ := os.Stat(sock)
	if gid != 0 || st.Mode().Perm() != 0o660 {
		t.Errorf("with group root: gid %d, mode %v", gid, st.Mode())
	}
}

// TestStatusJSONNames: bentoctl --json status prints one naming scheme,
// snake_case, down to the listeners' counters (they printed Go's field
// names, Open and RefusedTotal, beside uptime_ns).
func TestStatusJSONNames(t *testing.T) {
	b, err := json.Marshal(Status{Listeners: []ListenerStatus{{Name: "client"}}})
	if err != nil {
		t.Fatal(err)
	}
	var keys func(v any, at string)
	keys = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if k != strings.ToLower(k) || strings.ContainsAny(k, " -") {
					t.Errorf("key %q at %s is not snake_case", k, at)
				}
				keys(x, at+"."+k)
			}
		case []any:
			for _, x := range v {
				keys(x, at+"[]")
			}
		}
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	keys(v, "status")
	if !strings.Contains(string(b), `"refused_total":0`) || !strings.Contains(string(b), `"name":"client"`) {
		t.Errorf("the listener's counters are missing: %s", b)
	}
}
