// Command hostile is a wasm function that attacks its box, one attack per
// invocation (its first argument): the e2e and runner tests check that
// each is contained.
package main

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/torbento/bento/sdk/go/bento"
)

var sink [][]byte

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: hostile loop|grow|flood|read|exec|fork|socket|dial|echo|denied")
		return
	}
	switch os.Args[1] {
	case "loop": // a CPU bomb: no calls, no allocation
		x := uint64(1)
		for {
			x = x*6364136223846793005 + 1442695040888963407
		}
	case "grow": // a memory bomb: hold ever more
		for i := 0; ; i++ {
			sink = append(sink, make([]byte, 1<<20))
			sink[i][0] = 1
		}
	case "flood": // an output flood
		b := make([]byte, 64<<10)
		for i := range b {
			b[i] = 'x'
		}
		for {
			if _, err := os.Stdout.Write(b); err != nil {
				fmt.Fprintln(os.Stderr, "write:", err)
				os.Exit(3)
			}
		}
	case "read": // host files through WASI, with no preopened directory
		for _, p := range []string{"/etc/passwd", "/proc/self/environ", "/bento-runner", "."} {
			b, err := os.ReadFile(p)
			fmt.Printf("read %s: %d bytes, %v\n", p, len(b), err)
		}
		ents, err := os.ReadDir("/")
		fmt.Printf("readdir /: %d entries, %v\n", len(ents), err)
	case "exec":
		_, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "id"}, &os.ProcAttr{})
		fmt.Printf("exec: %v\n", err)
	case "fork":
		_, err := os.StartProcess("/bento-runner", []string{"bento-runner"}, &os.ProcAttr{})
		fmt.Printf("fork: %v\n", err)
	case "socket":
		_, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, 1)
		fmt.Printf("socket: %v\n", err)
	case "dial": // a TCP socket for a connection (to the address given)
		_, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		fmt.Printf("dial: %v\n", err)
	case "echo": // all the input there is, back (stdin is the client's input)
		n, err := io.Copy(os.Stdout, os.Stdin)
		fmt.Printf("\necho: %d bytes, %v\n", n, errText(err))
	case "denied": // a host call the manifest does not ask for
		_, err := bento.Fetch(bento.Request{URL: "http://127.0.0.1:9/"})
		fmt.Printf("fetch: %v\n", err)
	default:
		fmt.Println("unknown attack", os.Args[1])
		os.Exit(2)
	}
}

func errText(err error) string {
	if err == nil {
		return "<no error>"
	}
	return err.Error()
}
