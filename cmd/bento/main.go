// Command bento is the Bento client: look at a server's policy, deploy a
// function, invoke it (or reattach to an invocation), and shut it down.
//
// Usage:
//
//	bento policy   SERVER [--check DIR]
//	bento deploy   SERVER DIR
//	bento invoke   [-i] SERVER INVOCATION-TOKEN [ARG...]
//	bento attach   SERVER INVOCATION-TOKEN SESSION [--offset N]
//	bento shutdown SERVER SHUTDOWN-TOKEN
//	bento run      [-i] SERVER DIR [ARG...]
//
// With --tor-socks ADDR before the command (or $BENTO_TOR_SOCKS), every
// connection goes through tor's SocksPort: SERVER may be an onion address.
//
// ARGs are passed to the function: each is parsed as JSON if it can be
// (numbers, true, null, "quoted", [lists], {objects}) and is a string
// otherwise.
//
// Exit codes: 0 success; 1 the function raised an error; 2 usage; 3 the
// manifest was refused by the server's policy; 4 the server could not be
// reached; 5 unknown token, session or ended instance; 6 the function was
// stopped (a limit, a shutdown); 7 the server is busy; 8 other server
// errors.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/server"
)

const (
	exitOK       = 0
	exitFuncErr  = 1
	exitUsage    = 2
	exitRefused  = 3
	exitConnect  = 4
	exitNotFound = 5
	exitKilled   = 6
	exitBusy     = 7
	exitServer   = 8
)

const usage = `usage:
  bento policy   SERVER [--check DIR] [--json]  show a server's node policy (and check a function against it)
  bento deploy   SERVER DIR [--destinations ITEMS]  upload a function and start an instance; prints its tokens
  bento invoke   [-i] SERVER TOKEN [ARG...]  call the function (-i: send stdin to it)
  bento attach   SERVER TOKEN SESSION [--offset N]  reattach to an invocation after a disconnect
  bento shutdown SERVER SHUTDOWN-TOKEN       end an instance
  bento run      [-i] SERVER DIR [ARG...]    deploy, invoke and shut down in one step
  bento run      [-i] --choose DIR [ARG...]  the same on a box chosen at random from the directory
  bento boxes    [--check DIR] [--json]      list the boxes the Tor network's relays announce
  bento dust     up|ls|down|render           dust motes: a relay and a box that end (bento dust -h)

Finding boxes (boxes, run --choose) needs --tor-socks and the control port of the same tor:
  --tor-control ADDR (default $BENTO_TOR_CONTROL or 127.0.0.1:9051), --tor-cookie FILE;
  that tor must fetch relay descriptors (UseMicrodescriptors 0).

Global option, before the command:
  --tor-socks ADDR   reach the server through tor's SocksPort ADDR (also $BENTO_TOR_SOCKS);
                     SERVER may then be an onion address (xyz.onion:8888) or a relay's address
  --tor-retry DUR    while a new onion service's descriptor spreads, keep trying for DUR
                     (default 60s; also $BENTO_TOR_RETRY; 0: fail at once)

SERVER is HOST:PORT (default port 8888). ARGs are JSON when they parse as JSON, strings otherwise.
bento --version prints the release; COMMAND --help what a command takes.
`

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	ctx            context.Context
	torSocks       string // reach servers through this tor SocksPort
	transport      *transport
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage) // asked for: on stdout, exit 0
		return exitOK
	case "-version", "--version", "version":
		fmt.Fprintf(stdout, "bento %s (protocol %d)\n", strings.TrimPrefix(server.Version, "bentod/"), proto.Version)
		return exitOK
	}
	tr, args, err := parseTransport(args)
	if err != nil {
		fmt.Fprintf(stderr, "bento: %v\n\n%s", err, usage)
		return exitUsage
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, ctx: ctx, torSocks: tr.torSocks, transport: tr}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "policy":
		return c.policy(rest)
	case "deploy":
		return c.deploy(rest)
	case "invoke":
		return c.invoke(rest)
	case "attach":
		return c.attach(rest)
	case "shutdown":
		return c.shutdown(rest)
	case "run":
		return c.runCmd(rest)
	case "boxes":
		return c.boxes(rest)
	case "dust":
		return c.dust(rest)
	}
	fmt.Fprintf(stderr, "bento: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

func (c *cli) usageErr(format string, a ...any) int {
	fmt.Fprintf(c.stderr, "bento: "+format+"\n\n%s", append(a, usage)...)
	return exitUsage
}

func serverAddr(s string) string {
	if !strings.Contains(s, ":") || strings.HasSuffix(s, "]") {
		return s + ":8888"
	}
	return s
}

// fail prints err and returns the matching exit code.
func (c *cli) fail(err error) int {
	var se *client.Error
	var ce *client.ConnError
	var xe *client.ExitError
	switch {
	case errors.As(err, &se):
		fmt.Fprintf(c.stderr, "bento: server refused: %s\n", clean(se.Message))
		for _, v := range se.Violations {
			fmt.Fprintf(c.stderr, "  %s: asks %s, policy allows %s\n", clean(v.Item), clean(v.Asked), clean(v.Allowed))
		}
		switch se.Code {
		case client.CodeRefused:
			return exitRefused
		case client.CodeNotFound, client.CodeGone:
			return exitNotFound
		case client.CodeBusy:
			return exitBusy
		}
		return exitServer
	case errors.As(err, &ce):
		fmt.Fprintf(c.stderr, "bento: %v\n", ce)
		return exitConnect
	case errors.As(err, &xe):
		return c.exitCode(xe.Exit)
	}
	fmt.Fprintf(c.stderr, "bento: %v\n", err)
	return exitServer
}

func (c *cli) exitCode(e *client.Exit) int {
	switch e.Status {
	case client.StatusOK:
		return exitOK
	case client.StatusError:
		fmt.Fprintf(c.stderr, "bento: function error: %s\n", clean(e.Error.Error()))
		if e.Error.Backtrace != "" {
			for _, l := range strings.Split(strings.TrimSpace(e.Error.Backtrace), "\n") {
				fmt.Fprintf(c.stderr, "%s\n", clean(l))
			}
		}
		return exitFuncErr
	}
	fmt.Fprintf(c.stderr, "bento: function stopped: %s\n", clean(e.Reason))
	return exitKilled
}

// parseCode is the exit code for a flag parsing error: asking for help
// (-h, --help) is not a mistake.
func parseCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

// flags parses flags that may appear anywhere among positional arguments
// (until "--").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return pos, nil
}

func (c *cli) policy(args []string) int {
	fs := flag.NewFlagSet("policy", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	check := fs.String("check", "", "function directory to check against the policy")
	asJSON := fs.Bool("json", false, "print the policy as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return parseCode(err)
	}
	if len(pos) != 1 {
		return c.usageErr("policy takes SERVER [--check DIR]")
	}
	cl := c.newClient(serverAddr(pos[0]))
	p, err := cl.Policy(c.ctx)
	if err != nil {
		return c.fail(err)
	}
	if *check == "" {
		if *asJSON {
			b, _ := json.MarshalIndent(p, "", "  ")
			fmt.Fprintf(c.stdout, "%s\n", b)
		} else {
			printPolicy(c.stdout, p)
		}
		return exitOK
	}
	fn, err := client.LoadFunction(*check)
	if err != nil {
		return c.fail(err)
	}
	vs, err := fn.Check(p)
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: %v\n", err)
		return exitUsage
	}
	if len(vs) == 0 {
		fmt.Fprintf(c.stdout, "%s: the server's policy allows everything the manifest asks for\n", *check)
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s: the server would refuse this function:\n", *check)
	for _, v := range vs {
		fmt.Fprintf(c.stdout, "  %s: asks %s, policy allows %s\n", v.Item, v.Asked, v.Allowed)
	}
	return exitRefused
}

// destFlag collects --destinations values: tor exit-policy items that
// replace the manifest's destinations.
type destFlag []string

func (d *destFlag) String() string { return strings.Join(*d, ", ") }
func (d *destFlag) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*d = append(*d, item)
		}
	}
	return nil
}

// loadFunction reads a function directory, applying --destinations.
func (c *cli) loadFunction(dir string, dests destFlag) (*client.Function, int) {
	fn, err := client.LoadFunction(dir)
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: %v\n", err)
		return nil, exitUsage
	}
	if len(dests) > 0 {
		if err := fn.SetDestinations(dests); err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return nil, exitUsage
		}
	}
	return fn, exitOK
}

func (c *cli) deploy(args []string) int {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	var dests destFlag
	fs.Var(&dests, "destinations", "replace the manifest's destinations (e.g. \"accept 127.0.0.1:8080\")")
	args, err := parseInterspersed(fs, args)
	if err != nil {
		return parseCode(err)
	}
	if len(args) != 2 {
		return c.usageErr("deploy takes SERVER DIR [--destinations ITEMS]")
	}
	fn, code := c.loadFunction(args[1], dests)
	if fn == nil {
		return code
	}
	d, err := c.newClient(serverAddr(args[0])).Deploy(c.ctx, fn)
	if err != nil {
		return c.fail(err)
	}
	out := map[string]any{"instance": d.Instance, "invocation_token": d.InvocationToken, "shutdown_token": d.ShutdownToken}
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Fprintf(c.stdout, "%s\n", b)
	return exitOK
}

// parseArgs turns command-line words into function arguments.
func parseArgs(words []string) []any {
	out := make([]any, 0, len(words))
	for _, w := range words {
		var v any
		if err := json.Unmarshal([]byte(w), &v); err == nil {
			out = append(out, v)
		} else {
			out = append(out, w)
		}
	}
	return out
}

func (c *cli) invoke(args []string) int {
	fs := flag.NewFlagSet("invoke", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	interactive := fs.Bool("i", false, "send standard input to the function")
	if err := fs.Parse(args); err != nil {
		return parseCode(err)
	}
	pos := fs.Args()
	if len(pos) < 2 {
		return c.usageErr("invoke takes [-i] SERVER TOKEN [ARG...]")
	}
	cl := c.newClient(serverAddr(pos[0]))
	s, err := cl.Invoke(c.ctx, pos[1], parseArgs(pos[2:])...)
	if err != nil {
		return c.fail(err)
	}
	return c.stream(cl, pos[1], s, *interactive)
}

func (c *cli) attach(args []string) int {
	fs := flag.NewFlagSet("attach", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	offset := fs.Int64("offset", 0, "resume output at this offset (printed when a session is interrupted)")
	interactive := fs.Bool("i", false, "send standard input to the function")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return parseCode(err)
	}
	if len(pos) != 3 {
		return c.usageErr("attach takes SERVER TOKEN SESSION [--offset N]")
	}
	cl := c.newClient(serverAddr(pos[0]))
	s, err := cl.Attach(c.ctx, pos[1], pos[2], *offset)
	if err != nil {
		return c.fail(err)
	}
	return c.stream(cl, pos[1], s, *interactive)
}

// stream copies session output to stdout (and stdin to the session). The
// session's id goes to stderr first, so that even a client killed outright
// can be reattached.
func (c *cli) stream(cl *client.Client, token string, s *client.Session, interactive bool) int {
	s.OnNotice = func(n client.Notice) { fmt.Fprintf(c.stderr, "bento: notice from the box: %s\n", clean(n.Message)) }
	defer s.Close()
	fmt.Fprintf(c.stderr, "bento: session %s started; reattach with: bento attach %s INVOCATION-TOKEN %s\n", s.ID, cl.Addr, s.ID)
	if interactive {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := c.stdin.Read(buf)
				if n > 0 {
					if s.Send(append([]byte(nil), buf[:n]...)) != nil {
						return
					}
				}
				if err != nil {
					s.CloseInput()
					return
				}
			}
		}()
	}
	for {
		data, exit, err := s.Recv()
		if err != nil {
			fmt.Fprintf(c.stderr, "bento: disconnected from session %s; the function keeps running.\n"+
				"bento: reattach with: bento attach %s %s %s --offset %d\n", s.ID, cl.Addr, "INVOCATION-TOKEN", s.ID, s.Offset)
			return exitConnect
		}
		if exit != nil {
			return c.exitCode(exit)
		}
		if _, err := c.stdout.Write(data); err != nil {
			return exitServer
		}
	}
}

func (c *cli) shutdown(args []string) int {
	fs := flag.NewFlagSet("shutdown", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() { fmt.Fprintln(c.stderr, "usage: bento shutdown SERVER SHUTDOWN-TOKEN") }
	args, err := parseInterspersed(fs, args)
	if err != nil {
		return parseCode(err)
	}
	if len(args) != 2 {
		return c.usageErr("shutdown takes SERVER SHUTDOWN-TOKEN")
	}
	if err := c.newClient(serverAddr(args[0])).Shutdown(c.ctx, args[1]); err != nil {
		return c.fail(err)
	}
	return exitOK
}

func (c *cli) runCmd(args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	interactive := fs.Bool("i", false, "send standard input to the function")
	var dests destFlag
	fs.Var(&dests, "destinations", "replace the manifest's destinations")
	choose := fs.Bool("choose", false, "choose the box from the directory instead of naming one")
	tf := addTorControlFlags(fs)
	if err := fs.Parse(args); err != nil {
		return parseCode(err)
	}
	pos := fs.Args()
	if *choose {
		pos = append([]string{""}, pos...)
	}
	if len(pos) < 2 {
		return c.usageErr("run takes [-i] [--destinations ITEMS] SERVER DIR [ARG...], or --choose DIR [ARG...]")
	}
	fn, code := c.loadFunction(pos[1], dests)
	if fn == nil {
		return code
	}
	if *choose {
		dir, done, code := c.directory(tf)
		if dir == nil {
			return code
		}
		box, err := dir.Choose(c.ctx, fn)
		done()
		if err != nil {
			fmt.Fprintf(c.stderr, "bento: %v\n", err)
			return exitRefused
		}
		fmt.Fprintf(c.stderr, "bento: chose box %s beside relay %s (%s)\n", box.Addr(), clean(box.Relay.Nickname), box.Relay.Fingerprint)
		pos[0] = box.Addr()
	}
	cl := c.newClient(serverAddr(pos[0]))
	d, err := cl.Deploy(c.ctx, fn)
	if err != nil {
		return c.fail(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cl.Shutdown(ctx, d.ShutdownToken); err != nil && !client.IsCode(err, client.CodeNotFound) {
			fmt.Fprintf(c.stderr, "bento: shutting down instance %s: %v\n", d.Instance, err)
		}
	}()
	s, err := cl.Invoke(c.ctx, d.InvocationToken, parseArgs(pos[2:])...)
	if err != nil {
		return c.fail(err)
	}
	return c.stream(cl, d.InvocationToken, s, *interactive)
}

// printPolicy shows a policy the way an operator wrote it.
func printPolicy(w io.Writer, p *client.Policy) {
	name := p.Nickname
	if name == "" {
		name = "(no nickname)"
	}
	fmt.Fprintf(w, "server       %s\n", clean(name))
	fmt.Fprintf(w, "images       %s\n", clean(strings.Join(p.Images, ", ")))
	fmt.Fprintf(w, "host calls   %s\n", clean(strings.Join(p.APIs, ", ")))
	dest := "none (no network access)"
	if len(p.Destinations) > 0 {
		dest = clean(strings.Join(p.Destinations, ", "))
	}
	fmt.Fprintf(w, "destinations %s\n", dest)
	m := p.Max
	fmt.Fprintf(w, "per function memory %s, cpu %g cores, cpu time %s, processes %d, storage %s, output %s, lifetime %s, steps %d, upload %s\n",
		size(m.Memory), m.CPU, m.CPUTime, m.Processes, size(m.Storage), size(m.Output), m.Lifetime, m.Steps, size(m.Upload))
	fmt.Fprintf(w, "free now     memory %s, cpu %.2f cores, %d instances\n", size(p.Free.Memory), p.Free.CPU, p.Free.Instances)
	if p.Box != nil && p.Box.EndsAt != nil {
		drain := "?"
		if p.Box.DrainAt != nil {
			drain = p.Box.DrainAt.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "box ends     %s (no new functions from %s)\n", p.Box.EndsAt.Format(time.RFC3339), drain)
	}
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%d MB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// clean makes text a server (or a box in the directory) chose safe to
// print: anything not printable is escaped, so that no peer can send
// terminal control sequences to the user's terminal.
func clean(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0 {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}
