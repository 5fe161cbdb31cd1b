package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Ready(); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v, %v", sent, err)
	}
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	read := func() string {
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:n])
	}
	if sent, err := Ready(); !sent || err != nil {
		t.Fatalf("Ready: %v, %v", sent, err)
	}
	if got := read(); got != "READY=1\nSTATUS=serving" {
		t.Errorf("Ready sent %q", got)
	}
	Reloading()
	if got := read(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("Reloading sent %q", got)
	}
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	iv := WatchdogInterval()
	if iv != 100*time.Millisecond {
		t.Fatalf("WatchdogInterval = %v", iv)
	}
	stop := make(chan struct{})
	go Watchdog(iv, func() bool { return true }, stop)
	if got := read(); got != "WATCHDOG=1" {
		t.Errorf("watchdog sent %q", got)
	}
	close(stop)
	t.Setenv("WATCHDOG_PID", "1")
	if WatchdogInterval() != 0 {
		t.Error("a watchdog meant for another process was taken")
	}
	t.Setenv("NOTIFY_SOCKET", "relative")
	if _, err := Notify("READY=1"); err == nil {
		t.Error("a relative NOTIFY_SOCKET was accepted")
	}
	// Take keeps the values for bentod and out of its children's way.
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_PID", "")
	Take()
	defer func() { env.Lock(); env.taken = false; env.Unlock() }()
	if v, ok := os.LookupEnv("NOTIFY_SOCKET"); ok {
		t.Errorf("NOTIFY_SOCKET still in the environment: %q", v)
	}
	if _, ok := os.LookupEnv("WATCHDOG_USEC"); ok {
		t.Error("WATCHDOG_USEC still in the environment")
	}
	if sent, err := Ready(); !sent || err != nil {
		t.Errorf("Ready after Take: %v, %v", sent, err)
	}
	if got := read(); got != "READY=1\nSTATUS=serving" {
		t.Errorf("Ready after Take sent %q", got)
	}
	if WatchdogInterval() != 100*time.Millisecond {
		t.Error("the watchdog interval was lost by Take")
	}
}
