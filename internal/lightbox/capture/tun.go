package capture

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torbento/bento/internal/lightbox/etap"
)

// TUN reads IP packets from a TUN device (no packet information header):
// the gateway's live source, as LightBox's gateway reads its interface.
type TUN struct {
	f   *os.File
	buf []byte
}

// OpenTUN attaches to the TUN device name (creating it if the caller may).
// Packets read carry raw IP (link type 101).
func OpenTUN(name string) (*TUN, error) {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("TUN device name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		return nil, fmt.Errorf("attaching to TUN device %s: %w", name, err)
	}
	return &TUN{f: f, buf: make([]byte, 65536)}, nil
}

// Read returns the next packet, stamped with the time it was read.
func (t *TUN) Read() (etap.Packet, error) {
	n, err := t.f.Read(t.buf)
	if err != nil {
		return etap.Packet{}, err
	}
	return etap.Packet{Time: time.Now(), OrigLen: n, Data: append([]byte(nil), t.buf[:n]...)}, nil
}

// Write injects a packet into the kernel through the device.
func (t *TUN) Write(p []byte) error {
	_, err := t.f.Write(p)
	return err
}

// Close detaches from the device.
func (t *TUN) Close() error { return t.f.Close() }
