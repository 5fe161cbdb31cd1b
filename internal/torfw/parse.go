// Package torfw is bentod's control-port firewall. Functions never talk to
// tor's control port; they send command lines to bentod, which parses each
// into a typed command (never matching raw text), refuses everything that
// reconfigures or reveals the relay or touches other users' state with
// "510 Command filtered", rewrites what it allows (ADD_ONION always gets
// DiscardPK and never Detach), and keeps a per-function view: which
// circuits, streams and onion services each function owns, so replies and
// events show a function only its own and it can close only its own. When
// a function ends, everything it created is closed.
//
// Ownership comes from two places: IDs in replies to the function's own
// commands (EXTENDCIRCUIT, ADD_ONION), and the SOCKS_USERNAME field of
// CIRC and STREAM events, since bentod sends each instance's Tor traffic
// with SOCKS credentials of its own ("bento-<instance>").
package torfw

import (
	"fmt"
	"strings"

	"github.com/torbento/bento/internal/torctl"
)

// MaxLine bounds a function's command line.
const MaxLine = 4096

// Parse reads one command line from a function into a typed command. The
// line must be a single line (an optional trailing CRLF or LF is dropped):
// anything with a CR, LF or NUL inside, a multi-line "+" command, an
// unbalanced quote, or more than MaxLine bytes is rejected.
func Parse(line string) (torctl.Command, error) {
	line = strings.TrimSuffix(line, "\n")
	line = strings.TrimSuffix(line, "\r")
	if len(line) > MaxLine {
		return torctl.Command{}, fmt.Errorf("command longer than %d bytes", MaxLine)
	}
	if strings.ContainsAny(line, "\r\n\x00") {
		return torctl.Command{}, fmt.Errorf("one command per call: the line holds a line break or NUL")
	}
	if strings.HasPrefix(line, "+") {
		return torctl.Command{}, fmt.Errorf("multi-line commands are not available to functions")
	}
	toks, err := tokens(line)
	if err != nil {
		return torctl.Command{}, err
	}
	if len(toks) == 0 {
		return torctl.Command{}, fmt.Errorf("empty command")
	}
	return torctl.NewCommand(toks[0], toks[1:]...)
}

// tokens splits on spaces outside quoted strings, keeping quotes.
func tokens(line string) ([]string, error) {
	var out []string
	i := 0
	for i < len(line) {
		if line[i] == ' ' {
			i++
			continue
		}
		j := i
		for j < len(line) && line[j] != ' ' {
			if line[j] == '"' {
				_, n, err := torctl.Unquote(line[j:])
				if err != nil {
					return nil, fmt.Errorf("argument %d: %v", len(out), err)
				}
				j += n
				continue
			}
			j++
		}
		out = append(out, line[i:j])
		i = j
	}
	return out, nil
}

// kvArg splits a KEY=VALUE argument, unquoting VALUE.
func kvArg(a string) (key, value string, ok bool) {
	k, v, ok := strings.Cut(a, "=")
	if !ok {
		return "", "", false
	}
	if strings.HasPrefix(v, "\"") {
		u, _, err := torctl.Unquote(v)
		if err != nil {
			return "", "", false
		}
		v = u
	}
	return k, v, true
}

// validID reports whether s is a circuit or stream ID (1*16 IDChar).
func validID(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// validServiceID reports whether s is a v3 onion service ID.
func validServiceID(s string) bool {
	if len(s) != 56 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
