package netlimit

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// queued returns what waits to be read on a connection accepted from a
// Listener (SIOCINQ) and its receive buffer (SO_RCVBUF).
func queued(t *testing.T, c net.Conn) (inq, rcvbuf int) {
	t.Helper()
	rc, err := c.(*conn).Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var e1, e2 error
	rc.Control(func(fd uintptr) {
		inq, e1 = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		rcvbuf, e2 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	if e1 != nil || e2 != nil {
		t.Fatal(e1, e2)
	}
	return inq, rcvbuf
}

// A client that sends and sends while the server reads a while and then
// stops (a stalled upload waiting for the byte budget) parks at most the
// RecvBuffer's worth in the kernel. (Without it, TCP's autotuning grows
// the buffer with what the server read: 1.5 MB here at times, depending on
// the round trips it measured, so that case is not asserted.)
func TestRecvBufferBoundsWhatWaits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		buffer int
	}{
		{"32 KB", 32 << 10},
		{"128 KB", 128 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, Config{Total: 4, PerAddr: 2, RecvBuffer: tc.buffer})
			t.Cleanup(func() { l.Close() })
			c := dialFrom(t, "127.0.0.1", l.Addr())
			go func() {
				chunk := make([]byte, 64<<10)
				for {
					c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
			s, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// Read 8 MB: what autotuning learns from.
			if _, err := io.CopyN(io.Discard, s, 8<<20); err != nil {
				t.Fatal(err)
			}
			// Then stop, and let the queue fill.
			var inq, rcvbuf int
			for last, deadline := -1, time.Now().Add(3*time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				if inq, rcvbuf = queued(t, s); inq == last {
					break
				}
				last = inq
			}
			t.Logf("RecvBuffer %d: receive buffer %d bytes, %d bytes waiting", tc.buffer, rcvbuf, inq)
			// Linux doubles SO_RCVBUF for its bookkeeping.
			if rcvbuf != 2*tc.buffer {
				t.Errorf("the accepted connection's receive buffer is %d bytes, want %d (2 x RecvBuffer): not inherited from the listener", rcvbuf, 2*tc.buffer)
			}
			if inq > 2*tc.buffer {
				t.Errorf("%d bytes wait in the kernel, over the %d bytes RecvBuffer allows", inq, 2*tc.buffer)
			}
		})
	}
}
