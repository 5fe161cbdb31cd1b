package compat

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// bytesAcked is how many bytes written to c its peer's TCP has
// acknowledged (TCP_INFO's tcpi_bytes_acked, kept after a reset), and
// whether it could tell.
func bytesAcked(c net.Conn) (int64, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int64
	var gerr error
	err = rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if gerr == nil {
			n = int64(info.Bytes_acked)
		}
	})
	if err != nil || gerr != nil {
		return 0, false
	}
	return n, true
}
