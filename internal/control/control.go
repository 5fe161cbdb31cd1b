// Package control is bentod's local control socket, which bentoctl
// speaks: a Unix socket only root, bentod's own user and one group may
// use, carrying one JSON request and one JSON answer per line.
//
// Requests are small and few: a request line is at most MaxRequest
// bytes, a connection is served for at most ConnTimeout, and at most
// MaxConns connections are served at once.
package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/netlimit"
)

// Request is one command.
type Request struct {
	Cmd    string `json:"cmd"`              // status, ls, end, drain, reload, stop
	ID     string `json:"id,omitempty"`     // end: the instance
	Reason string `json:"reason,omitempty"` // end: told to its clients
	On     *bool  `json:"on,omitempty"`     // drain: on or off
}

// Status is the answer to "status": what bentod is and holds.
type Status struct {
	Version       string           `json:"version"`
	PID           int              `json:"pid"`
	Uptime        time.Duration    `json:"uptime_ns"`
	Nickname      string           `json:"nickname,omitempty"`
	Onion         string           `json:"onion,omitempty"`
	Draining      bool             `json:"draining"`
	Instances     int              `json:"instances"`
	MaxInstances  int              `json:"max_instances"`
	MemoryLimit   int64            `json:"memory_limit_bytes"`
	CPULimit      float64          `json:"cpu_limit_cores"`
	InFlight      int64            `json:"in_flight_bytes"`
	InFlightLimit int64            `json:"in_flight_limit_bytes"`
	HeapBytes     uint64           `json:"heap_bytes"`
	Goroutines    int              `json:"goroutines"`
	Listeners     []ListenerStatus `json:"listeners"`
}

// ListenerStatus is one listener's connections and counters.
type ListenerStatus struct {
	Name string `json:"name"`
	netlimit.Stats
}

// Response is the answer to a Request: Result on success, else Error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Handler carries out a request; its result is sent as JSON.
type Handler func(Request) (any, error)

const (
	MaxRequest  = 4 << 10
	MaxAnswer   = 16 << 20 // what a client reads at most (a long instance list)
	ConnTimeout = 30 * time.Second
	MaxConns    = 16
)

// Listen makes the socket at path, 0600, or 0660 with group when one is
// given (it must exist): then only root, bentod's user and the group's
// members may connect. Its directory is made 0750 (given to the group) if
// missing; an existing one must not be writable by others, who could
// otherwise swap the socket for a link between its making and its mode
// being set. A socket an earlier bentod left is replaced; a live one, or
// anything that is not a socket, is not touched.
func Listen(path, group string) (net.Listener, int, error) {
	fail := func(format string, a ...any) (net.Listener, int, error) {
		return nil, -1, fmt.Errorf("ControlSocket %s: "+format, append([]any{path}, a...)...)
	}
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fail("ControlSocketGroup %q: %v (create the group, or leave ControlSocketGroup out: root and bentod's user only)", group, err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	dir := filepath.Dir(path)
	st, err := os.Lstat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fail("%v", err)
		}
		if gid >= 0 {
			// The group must reach the socket through the directory.
			if err := os.Chown(dir, -1, gid); err != nil {
				return fail("giving its directory to group %s: %v", group, err)
			}
		}
	case err != nil:
		return fail("%v", err)
	case !st.IsDir():
		return fail("%s is not a directory", dir)
	case st.Mode().Perm()&0o002 != 0:
		return fail("its directory %s is writable by everyone: put the socket in a directory only root can write, such as /run/bento", dir)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return fail("there is a file there that is not a socket; remove it, or give ControlSocket another path")
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return fail("another bentod answers on it; give this one another path")
		}
		_ = os.Remove(path) // an earlier bentod's
	}
	// Connecting needs write permission, which the umask takes from
	// others: no moment when they could connect before the mode is set.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fail("%v", err)
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			ln.Close()
			return fail("giving it to group %s: %v", group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return fail("%v", err)
	}
	return ln, gid, nil
}

// Serve answers requests on ln until it is closed. Peers are checked
// again by their credentials: root, bentod's own user, or a member of gid.
func Serve(ln net.Listener, gid int, h Handler) error {
	sem := make(chan struct{}, MaxConns)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of descriptors and the like: wait and go on.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			answer(c, Response{Error: "busy: too many control connections at once"})
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer c.Close()
			serveConn(c, gid, h)
		}()
	}
}

func serveConn(c net.Conn, gid int, h Handler) {
	_ = c.SetDeadline(time.Now().Add(ConnTimeout))
	if err := allowed(c, gid); err != nil {
		answer(c, Response{Error: err.Error()})
		return
	}
	r := bufio.NewReaderSize(c, 512)
	for {
		line, err := readLine(r)
		if err != nil {
			if !errors.Is(err, errEOF) {
				answer(c, Response{Error: err.Error()})
			}
			return
		}
		resp, fatal := process(line, h)
		if answer(c, resp) != nil || fatal {
			return
		}
	}
}

// process carries out one request line. fatal: the line was not a
// request, and the connection is to be closed.
func process(line string, h Handler) (resp Response, fatal bool) {
	var req Request
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Response{Error: fmt.Sprintf("bad request: %v", err)}, true
	}
	res, err := h(req)
	if err != nil {
		return Response{Error: err.Error()}, false
	}
	b, err := json.Marshal(res)
	if err != nil {
		return Response{Error: "internal error: " + err.Error()}, false
	}
	return Response{Result: b}, false
}

var errEOF = errors.New("end of requests")

// readLine reads one request line of at most MaxRequest bytes; the buffer
// grows only as bytes arrive.
func readLine(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		frag, err := r.ReadSlice('\n')
		b.Write(frag)
		if b.Len() > MaxRequest {
			return "", fmt.Errorf("request longer than %d bytes", MaxRequest)
		}
		switch {
		case err == nil:
			return strings.TrimSpace(b.String()), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case b.Len() == 0:
			return "", errEOF
		}
		return "", fmt.Errorf("request not ended by a newline: %v", err)
	}
}

func answer(c net.Conn, r Response) error {
	b, _ := json.Marshal(r)
	_, err := c.Write(append(b, '\n'))
	return err
}

// allowed checks the peer's credentials (SO_PEERCRED).
func allowed(c net.Conn, gid int) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if cred.Uid == 0 || int(cred.Uid) == os.Getuid() || gid >= 0 && inGroup(int(cred.Pid), int(cred.Gid), gid) {
		return nil
	}
	return fmt.Errorf("permission denied: the control socket is for root, bentod's user and the group of ControlSocketGroup")
}

// inGroup reports whether the process pid (primary group primary) is in
// group gid, reading its supplementary groups from /proc.
func inGroup(pid, primary, gid int) bool {
	if primary == gid {
		return true
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "Groups:"); ok {
			for _, f := range strings.Fields(rest) {
				if n, err := strconv.Atoi(f); err == nil && n == gid {
					return true
				}
			}
		}
	}
	return false
}

// Call sends one request to the socket at path and decodes the result
// into out (which may be nil).
func Call(path string, req Request, out any, timeout time.Duration) error {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		var se *os.SyscallError
		switch {
		case errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("no control socket at %s: is bentod running, with ControlSocket %s? (bentoctl -s PATH names another)", path, path)
		case errors.Is(err, os.ErrPermission):
			return fmt.Errorf("permission denied on %s: run bentoctl as root, as bentod's user, or as a member of its ControlSocketGroup", path)
		case errors.As(err, &se) && errors.Is(se.Err, syscall.ECONNREFUSED):
			return fmt.Errorf("nothing answers on %s: bentod is not running (a socket an earlier bentod left)", path)
		}
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return err
	}
	r := bufio.NewReader(&limited{c: c, n: MaxAnswer})
	line, err := r.ReadBytes('\n')
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("bentod did not answer within %s (it may still be carrying the command out; bentoctl --timeout waits longer)", timeout)
	}
	if err != nil {
		return fmt.Errorf("reading bentod's answer: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("bentod's answer is not JSON: %w", err)
	}
	if resp.Error != "" {
		return errors.New(resp.Error)
	}
	if out != nil {
		return json.Unmarshal(resp.Result, out)
	}
	return nil
}

type limited struct {
	c net.Conn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("bentod's answer is longer than %d bytes", MaxAnswer)
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}
