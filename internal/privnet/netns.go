package privnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// LoopbackOnly returns nil if the calling process's network namespace has
// no interface but "lo" and no address outside 127.0.0.0/8 and ::1. It
// brings lo up first (a fresh namespace starts with it down).
func LoopbackOnly() error {
	_ = exec.Command("ip", "link", "set", "lo", "up").Run()
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, ifc := range ifs {
		if ifc.Name != "lo" {
			return fmt.Errorf("privnet: this network namespace has interface %q besides lo: refusing to start tor here (run inside unshare --net)", ifc.Name)
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || !ipn.IP.IsLoopback() {
				return fmt.Errorf("privnet: non-loopback address %v on lo: refusing to start tor", a)
			}
		}
	}
	// /proc/net/dev is per namespace: a second opinion.
	b, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n")[2:] {
		name, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && name != "lo" {
			return fmt.Errorf("privnet: /proc/net/dev lists %q: refusing to start tor", name)
		}
	}
	up := false
	for _, ifc := range ifs {
		up = up || ifc.Flags&net.FlagUp != 0
	}
	if !up {
		return errors.New("privnet: lo is down and could not be brought up (need CAP_NET_ADMIN in the namespace)")
	}
	return nil
}

// EnvInNamespace marks a process re-executed by Isolate.
const EnvInNamespace = "BENTO_PRIVNET_NETNS"

// Isolate makes sure the calling program runs in a network namespace of
// its own that has only loopback, and a PID namespace whose end takes every
// tor with it. If the process is not already there, Isolate re-executes it
// under `unshare --net --pid --fork --kill-child --mount-proc` and exits
// with its status; it returns only in the isolated process. Call it first
// thing in TestMain or main.
func Isolate() {
	if os.Getenv(EnvInNamespace) == "1" {
		if err := LoopbackOnly(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		fmt.Fprintln(os.Stderr, "privnet: unshare (util-linux) is needed to isolate the private Tor network")
		os.Exit(2)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "privnet:", err)
		os.Exit(2)
	}
	args := []string{"--net", "--pid", "--fork", "--kill-child", "--mount-proc"}
	if os.Geteuid() != 0 {
		args = append([]string{"--user", "--map-root-user"}, args...)
	}
	args = append(append(args, "--", self), os.Args[1:]...)
	cmd := exec.Command(unshare, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), EnvInNamespace+"=1")
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "privnet: re-executing in a namespace:", err)
		os.Exit(2)
	}
	os.Exit(0)
}
