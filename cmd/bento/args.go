package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/torbento/bento/client"
)

// splitFlags separates a command's flags from its positional arguments:
// flags may come anywhere among the arguments, until "--", after which
// everything is positional (function arguments that look like flags, such
// as -1, go there). A flag that takes a value and is not written
// -flag=value takes the next word as its value, as package flag does.
// Unknown flags are kept with the flags, for fs.Parse to report.
func splitFlags(fs *flag.FlagSet, args []string) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(pos, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, pos
}

// parseFlags parses a command's flags wherever they are and returns the
// positional arguments. Errors are reported here; the int is the exit
// code to return when err is not nil (0 for --help).
func (c *cli) parseFlags(fs *flag.FlagSet, args []string) ([]string, int, error) {
	flags, pos := splitFlags(fs, args)
	for _, f := range flags {
		if f == "-json" || f == "--json" || f == "-json=true" || f == "--json=true" {
			c.json = true // errors are JSON from the start
		}
	}
	// package flag's own report (the error, then every flag) is replaced
	// by one line and the synopsis.
	fs.SetOutput(io.Discard)
	// "--" keeps the positional arguments from being parsed again: after
	// it, fs.Args() is pos.
	err := fs.Parse(append(append(flags, "--"), pos...))
	fs.SetOutput(c.stderr)
	switch {
	case err == nil:
		return pos, exitOK, nil
	case errors.Is(err, flag.ErrHelp):
		// Asked for: on stdout, exit 0.
		fs.SetOutput(c.stdout)
		fs.Usage()
		return nil, exitOK, err
	}
	msg := err.Error()
	if strings.Contains(msg, "not defined") {
		if g := globalOption(msg); g != "" {
			msg += fmt.Sprintf(" (%s is a global option: it goes before the command, bento %s … %s …)", g, g, fs.Name())
		} else {
			msg += " (an argument that starts with '-' goes after --, e.g. bento invoke SERVER TOKEN -- -1)"
		}
	}
	if c.json {
		c.jsonError(exitUsage, msg, nil)
	} else {
		fmt.Fprintf(c.stderr, "bento: %s\nusage: bento %s %s\n(bento %s --help lists its flags)\n", msg, fs.Name(), c.synopsis, fs.Name())
	}
	return nil, exitUsage, err
}

// globalOption returns the global option package flag's "not defined"
// message names, if it names one.
func globalOption(msg string) string {
	for _, g := range []string{"tor-socks", "tor-retry", "pin", "insecure-cleartext"} {
		if strings.HasSuffix(msg, " -"+g) {
			return "--" + g
		}
	}
	return ""
}

// parseAnywhere is parseFlags for commands that read fs.Args(): it
// returns the error, nil after --help.
func (c *cli) parseAnywhere(fs *flag.FlagSet, args []string) error {
	_, _, err := c.parseFlags(fs, args)
	return err
}

// newFlags returns a command's flag set; synopsis is what it takes.
func (c *cli) newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	c.synopsis = synopsis
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bento %s %s\n\nFlags may come anywhere among the arguments; arguments after -- are never flags.\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// addJSON adds --json: results as JSON on stdout, errors as one JSON
// object on stderr.
func (c *cli) addJSON(fs *flag.FlagSet) {
	fs.BoolVar(&c.json, "json", false, `print the result as JSON on stdout, and errors as {"error": MESSAGE, "code": EXIT-CODE} on stderr`)
}

// addTimeout adds --timeout to a command that talks to a server.
func (c *cli) addTimeout(fs *flag.FlagSet) {
	if c.timeout == 0 {
		c.timeout = defaultTimeout
	}
	fs.Var((*timeoutFlag)(&c.timeout), "timeout", "give up on a request the server has not answered in this long (e.g. 30s, 2m); a session's output may take as long as the function runs")
}

// defaultTimeout is --timeout's default.
const defaultTimeout = 60 * time.Second

// timeoutFlag is --timeout: a duration with its unit, at least a
// millisecond and at most a day; a bare number is refused with the unit
// it lacks, not flag's "parse error".
type timeoutFlag time.Duration

func (f *timeoutFlag) String() string { return time.Duration(*f).String() }

func (f *timeoutFlag) Set(v string) error {
	d, err := parseTimeout(v)
	if err != nil {
		return err
	}
	*f = timeoutFlag(d)
	return nil
}

// parseTimeout reads a --timeout value.
func parseTimeout(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		if _, nerr := strconv.ParseFloat(v, 64); nerr == nil {
			return 0, fmt.Errorf("%q has no unit: give one, e.g. %ss or %sm", v, v, v)
		}
		return 0, fmt.Errorf("%q is not a duration (e.g. 30s, 2m, 1h)", v)
	}
	if d < time.Millisecond || d > 24*time.Hour {
		return 0, fmt.Errorf("%q: want a duration from 1ms to 24h", v)
	}
	return d, nil
}

// client returns a client for the server named on the command line
// (newClient).
func (c *cli) client(server string) *client.Client {
	cl := c.newClient(server)
	// Through Tor the descriptor retries (--tor-retry) come out of the
	// request's time, so a request gets at least that long.
	cl.Timeout = c.requestTimeout()
	return cl
}

// requestTimeout is how long a request waits for its answer: --timeout,
// or through Tor at least the descriptor retries' time.
func (c *cli) requestTimeout() time.Duration {
	if c.transport == nil || c.transport.torSocks == "" {
		return c.timeout
	}
	return max(c.timeout, c.transport.torTimeout())
}

// jsonError prints an error as one JSON object on stderr.
func (c *cli) jsonError(code int, msg string, extra map[string]any) {
	out := map[string]any{}
	for k, v := range c.jsonExtra {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	out["error"], out["code"] = msg, code
	b, _ := json.Marshal(out)
	fmt.Fprintf(c.stderr, "%s\n", b)
}

// errorf reports an error: "bento: MESSAGE" on stderr, or with --json one
// JSON object. It returns code.
func (c *cli) errorf(code int, extra map[string]any, format string, a ...any) int {
	msg := fmt.Sprintf(format, a...)
	if c.json {
		c.jsonError(code, msg, extra)
	} else {
		fmt.Fprintf(c.stderr, "bento: %s\n", msg)
	}
	return code
}

// Token kinds: bentod's tokens carry a prefix that says which they are
// (internal/server/tokens.go).
const (
	invPrefix = "bento-inv-"
	sdPrefix  = "bento-sd-"
)

// wrongToken explains a token of the other kind, before anything is sent:
// want is the kind the command takes. It returns -1 for a token that may
// be right (of the kind wanted, or of no known kind).
// serverToken checks the positional arguments of a command that takes
// SERVER TOKEN first (ok tells whether their count is right; usage says
// what the command takes), recognises the other kind of token, and
// resolves @ID from the local store: the token, and -1 when all is well,
// else the exit code.
func (c *cli) serverToken(cmd string, pos []string, ok bool, usage string, shutdown bool) (string, int) {
	if !ok {
		return "", c.usageErr("%s takes %s", cmd, usage)
	}
	if code := c.wrongToken(cmd, pos[1], shutdown); code >= 0 {
		return "", code
	}
	return c.resolveToken(pos[0], pos[1], shutdown)
}

func (c *cli) wrongToken(cmd, token string, wantShutdown bool) int {
	switch {
	case wantShutdown && strings.HasPrefix(token, invPrefix):
		what := "cannot end an instance"
		if cmd == "update" {
			what = "cannot replace an instance's code"
		}
		return c.errorf(exitUsage, nil, "%s takes the shutdown token (%s…), and this is the invocation token (%s…), which %s; use the shutdown token bento deploy printed", cmd, sdPrefix, invPrefix, what)
	case !wantShutdown && strings.HasPrefix(token, sdPrefix):
		return c.errorf(exitUsage, nil, "%s takes the invocation token (%s…), and this is the shutdown token (%s…); use the invocation token bento deploy printed (keep the shutdown token to yourself)", cmd, invPrefix, sdPrefix)
	}
	return -1
}
