// Package sdnotify tells systemd how bentod is doing (sd_notify(3)) when
// it runs as a Type=notify service: ready, reloading, stopping, and the
// watchdog's keep-alive. Outside systemd ($NOTIFY_SOCKET unset) every
// call does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// env holds systemd's variables once Take has moved them out of the
// environment.
var env struct {
	sync.Mutex
	taken                     bool
	socket, usec, watchdogPID string
}

// Take moves systemd's variables (NOTIFY_SOCKET, WATCHDOG_USEC,
// WATCHDOG_PID) out of the process's environment, as sd_notify's
// unset_environment does, so that no child inherits them: runc would
// otherwise pass the notify socket into every container, and a container
// could then speak for bentod. Call it once, early; the package's
// functions read the taken values from then on.
func Take() {
	env.Lock()
	defer env.Unlock()
	env.socket, env.usec, env.watchdogPID = os.Getenv("NOTIFY_SOCKET"), os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID")
	env.taken = true
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
}

func getenv(k string) string {
	env.Lock()
	defer env.Unlock()
	if !env.taken {
		return os.Getenv(k)
	}
	switch k {
	case "NOTIFY_SOCKET":
		return env.socket
	case "WATCHDOG_USEC":
		return env.usec
	}
	return env.watchdogPID
}

// Notify sends state (lines such as "READY=1") to systemd's socket. It
// reports whether a socket was there to send to.
func Notify(state string) (bool, error) {
	path := getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	} else if path[0] != '/' {
		return false, fmt.Errorf("NOTIFY_SOCKET %q is neither a path nor an abstract socket", path)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = c.Write([]byte(state))
	return err == nil, err
}

// Ready says bentod serves.
func Ready() (bool, error) { return Notify("READY=1\nSTATUS=serving") }

// Reloading says a reload began (Type=notify-reload's protocol, which
// plain Type=notify accepts too); Ready must follow when it is done.
func Reloading() (bool, error) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Sec*1e6 + ts.Nsec/1e3
	return Notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10))
}

// Stopping says bentod is shutting down.
func Stopping() (bool, error) { return Notify("STOPPING=1") }

// WatchdogInterval returns how often systemd wants WATCHDOG=1 (half its
// WatchdogSec, as sd_watchdog_enabled(3) advises), or 0 when it does not
// watch this process.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 || usec > 1<<40 {
		return 0
	}
	if pid := getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// Watchdog pings systemd's watchdog every interval while alive reports
// true, until stop is closed. alive is where bentod proves it can still
// do its work (its main loops answer), not merely that the process runs.
func Watchdog(interval time.Duration, alive func() bool, stop <-chan struct{}) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if alive() {
				_, _ = Notify("WATCHDOG=1")
			}
		}
	}
}
