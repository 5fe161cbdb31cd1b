package netlimit

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLastDescriptor: accept takes the process's last descriptor, so the
// runtime's duplicate of it (net.FileConn) fails with EMFILE. The
// newcomer was closed as soon as it was accepted, silently, and accept
// itself never failed, so nothing lowered the limit or made room: under
// a flood of idle connections every newcomer, an honest one too, met the
// same fate (TestSiege/out-of-descriptors, failing one run in two). Now
// the spare descriptor takes the duplicate, the newcomer is served, and
// the limit comes down.
//
// The descriptor limit is the whole process's, so the listener runs in a
// child process of its own.
func TestLastDescriptor(t *testing.T) {
	if os.Getenv("NETLIMIT_LAST_FD_CHILD") == "1" {
		lastDescriptorChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLastDescriptor$")
	cmd.Env = append(os.Environ(), "NETLIMIT_LAST_FD_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "addr ") {
		cmd.Wait()
		t.Fatalf("the child gave no address: %q; stderr: %s", lines.Text(), stderr.String())
	}
	addr := strings.TrimPrefix(lines.Text(), "addr ")
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || reply != "served\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the newcomer that took the last descriptor got %q, %v (want served); child: %s", reply, err, stderr.String())
	}
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v; %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "out of file descriptors") {
		t.Errorf("no warning of the shortage; child: %s", stderr.String())
	}
	if got := strings.Join(rest, "\n"); !strings.Contains(got, "lowered") {
		t.Errorf("the limit did not come down: %s", got)
	}
}

// lastDescriptorChild listens, leaves exactly one descriptor free, and
// serves one connection: it says "served" to a hello.
func lastDescriptorChild() {
	fail := func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, f+"\n", a...)
		os.Exit(1)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	l := New(ln, Config{Total: 64, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if l.raw == nil {
		fail("the listener is not on the raw accept path")
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		accepted <- c
	}()
	time.Sleep(100 * time.Millisecond) // the accept loop waits in the poller
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fail("getrlimit: %v", err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fail("%v", err)
	}
	low := lim
	low.Cur = uint64(len(fds) + 16)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		fail("setrlimit: %v", err)
	}
	var held []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, syscall.EMFILE) {
			break
		}
		if err != nil {
			fail("open: %v", err)
		}
		held = append(held, fd)
	}
	unix.Close(held[len(held)-1]) // one free: accept's
	fmt.Printf("addr %s\n", ln.Addr())
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(8 * time.Second):
		fail("the newcomer was never handed out (accepted and closed for want of a descriptor?); stats %+v", l.Stats())
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "hello\n" {
		fail("read %q: %v", line, err)
	}
	if _, err := c.Write([]byte("served\n")); err != nil {
		fail("write: %v", err)
	}
	l.mu.Lock()
	limit := l.limit
	l.mu.Unlock()
	if limit < 64 {
		fmt.Printf("lowered to %d\n", limit)
	} else {
		fmt.Printf("limit still %d\n", limit)
	}
	c.Close()
	os.Exit(0)
}
