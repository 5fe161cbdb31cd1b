package target

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/flashflow/echo"
	"github.com/torbento/bento/internal/flashflow/link"
)

func TestBackground(t *testing.T) {
	const d = 498 * 31 * 100 // whole cells, whole SENDME periods
	cells := uint64(d / 498 * 514)
	sendmes := uint64(d / 498 / 31 * 514)
	cases := []struct {
		name         string
		dr, dw       uint64
		in, out      uint64
		local        bool
		wantS, wantR uint32
	}{
		{"idle relay", 1000, 2000, 0, 0, false, 2000, 1000},
		{"only the measurement", cells + sendmes, cells + sendmes, d, d, false, 0, 0},
		{"measurement and background", cells + sendmes + 5000, cells + sendmes + 7000, d, d, false, 7000, 5000},
		{"loopback counted", cells + sendmes + d + 5000, cells + sendmes + d + 7000, d, d, true, 7000, 5000},
		{"counters behind the echo: floored", 10, 10, d, d, false, 0, 0},
		{"saturates", 1 << 40, 1 << 40, 0, 0, false, 1<<32 - 1, 1<<32 - 1},
	}
	for _, c := range cases {
		s, r := Background(c.dr, c.dw, 1000*498, 1000*498+c.in, 0, c.out, c.local)
		if s != c.wantS || r != c.wantR {
			t.Errorf("%s: got sent %d recv %d, want %d %d", c.name, s, r, c.wantS, c.wantR)
		}
	}
	// Cells are counted on running totals: a second's data that
	// completes a cell begun the second before is one cell, not two.
	if echo.CellBytes(500)-echo.CellBytes(400) != 514 {
		t.Fatal("CellBytes changed")
	}
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	id, err := link.LoadOrCreate(filepath.Join(dir, "c"), filepath.Join(dir, "k"), "t")
	if err != nil {
		t.Fatal(err)
	}
	traffic := func(context.Context) (uint64, uint64, error) { return 0, 0, nil }
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{EchoPort: 1, Traffic: traffic, Period: time.Minute}, "period"},
		{Config{EchoPort: 1, Traffic: traffic, MaxDuration: 5 * time.Second}, "duration"},
		{Config{Traffic: traffic}, "echo port"},
		{Config{EchoPort: 1}, "traffic counters"},
		{Config{EchoPort: 1, Traffic: traffic, Coordinators: []string{"nope"}}, "fingerprint"},
	} {
		if _, err := New(c.cfg, id); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %s", c.cfg, err, c.want)
		}
	}
}

// Anyone on Tor can reach the echo port through the relay: outside a
// measurement, connections are closed at once.
func TestEchoClosedOutsideMeasurement(t *testing.T) {
	dir := t.TempDir()
	id, err := link.LoadOrCreate(filepath.Join(dir, "c"), filepath.Join(dir, "k"), "t")
	if err != nil {
		t.Fatal(err)
	}
	tg, err := New(Config{EchoPort: 1, Traffic: func(context.Context) (uint64, uint64, error) { return 0, 0, nil }}, id)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tg.ServeEcho(ctx, ln)
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
			t.Fatalf("connection %d kept open outside a measurement", i)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("connection %d not closed at once", i)
		}
		c.Close()
	}
}
