// Command hello-wasm greets whoever invokes it and counts the greetings
// in the instance's storage: a Bento function in Go for the wasm image.
package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/torbento/bento/sdk/go/bento"
)

func main() {
	name := "world"
	if len(os.Args) > 1 {
		name = os.Args[1]
	}
	n := 0
	v, found, err := bento.Get("greetings")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the count:", err)
		os.Exit(1)
	}
	if found {
		n, _ = strconv.Atoi(string(v))
	}
	n++
	if err := bento.Put("greetings", []byte(strconv.Itoa(n))); err != nil {
		fmt.Fprintln(os.Stderr, "storing the count:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "greeted %s\n", name)
	fmt.Printf("hello, %s! (greeting %d, from a wasm module)\n", name, n)
}
