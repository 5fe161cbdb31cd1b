// Command privnet runs a private Tor network of Debian's tor on loopback,
// inside a network namespace of its own that has only lo, for demos and
// manual testing, and runs a command inside it:
//
//	privnet run DIR [-- CMD [ARG...]]
//
// DIR keeps the network's keys between runs. CMD sees PRIVNET_JOIN_TORRC
// (a file of the torrc lines a relay of its own needs to join: a dust
// mote's --network-torrc), PRIVNET_SOCKS and
// PRIVNET_CONTROL (the client's SOCKS and control ports), PRIVNET_COOKIE,
// and for each exit relay N PRIVNET_EXITN_SOCKS, PRIVNET_EXITN_CONTROL and
// PRIVNET_EXITN_COOKIE. Without CMD, privnet prints them and waits for
// SIGINT. Every tor ends with privnet (see package privnet for the safety
// rules every tor is started under).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/torbento/bento/internal/privnet"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) < 2 || args[0] != "run" || (len(args) > 2 && args[2] != "--") {
		fmt.Fprintln(os.Stderr, "usage: privnet run DIR [-- CMD [ARG...]]")
		return 2
	}
	privnet.Isolate()
	dir := args[1]
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := privnet.Start(ctx, dir, privnet.Options{Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer n.Stop()
	join, err := n.JoinTorrc()
	if err == nil {
		err = os.WriteFile(filepath.Join(n.Dir, "join.torrc"), []byte(join), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "privnet:", err)
		return 1
	}
	env := []string{
		"PRIVNET_DIR=" + n.Dir,
		"PRIVNET_JOIN_TORRC=" + filepath.Join(n.Dir, "join.torrc"),
		"PRIVNET_SOCKS=" + n.Client().SocksAddr(),
		"PRIVNET_CONTROL=" + n.Client().ControlAddr(),
		"PRIVNET_COOKIE=" + n.Client().CookieFile(),
	}
	for i, e := range n.Exits() {
		env = append(env,
			fmt.Sprintf("PRIVNET_EXIT%d_SOCKS=%s", i, e.SocksAddr()),
			fmt.Sprintf("PRIVNET_EXIT%d_CONTROL=%s", i, e.ControlAddr()),
			fmt.Sprintf("PRIVNET_EXIT%d_COOKIE=%s", i, e.CookieFile()))
	}
	if len(args) <= 3 {
		for _, e := range env {
			fmt.Println(e)
		}
		fmt.Fprintln(os.Stderr, "privnet: running; Ctrl-C stops it")
		<-ctx.Done()
		return 0
	}
	cmd := exec.Command(args[3], args[4:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "privnet:", err)
		return 1
	}
	go func() {
		<-ctx.Done()
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}
