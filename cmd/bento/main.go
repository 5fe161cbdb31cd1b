// Command bento is the Bento client: create and check a function, look
// at a server's policy, deploy a function, invoke it (or reattach to an
// invocation), and shut it down.
//
// Usage:
//
//	bento new      NAME [--template hello|echo|dropbox]
//	bento check    DIR [--json]
//	bento dev      [-i] [--policy BENTORC] [--storage DIR] DIR [ARG...] [--json]
//	bento policy   SERVER [--check DIR] [--json]
//	bento deploy   SERVER DIR [--json]
//	bento invoke   [-i] SERVER INVOCATION-TOKEN [ARG...] [--json]
//	bento attach   SERVER INVOCATION-TOKEN SESSION [--offset N]
//	bento shutdown SERVER SHUTDOWN-TOKEN
//	bento run      [-i] SERVER DIR [ARG...] [--json]
//	bento logs     SERVER TOKEN [--follow]
//	bento update   SERVER SHUTDOWN-TOKEN DIR [--json]
//	bento ls       [--json]
//	bento forget   INSTANCE
//	bento shard    put|get|rm  (bento shard -h)
//	bento compat   [-i] SERVER FILE CALL
//
// Flags may come anywhere among a command's arguments, until "--": what
// follows it is never a flag. Commands that talk to a server take
// --timeout DURATION. With --json, results are JSON on stdout and an
// error is one JSON object {"error": MESSAGE, "code": EXIT} on stderr.
//
// With --tor-socks ADDR before the command (or $BENTO_TOR_SOCKS), every
// connection goes through tor's SocksPort: SERVER may be an onion address.
//
// A server reached by its IP address or name speaks TLS 1.3 with the
// certificate pinned by SERVER#sha256:HEX, or by --pin sha256:HEX before
// the command ($BENTO_PIN); without a pin bento speaks cleartext only to
// an onion address or over loopback, and elsewhere only with
// --insecure-cleartext before the command.
//
// ARGs are passed to the function: each is parsed as JSON if it can be
// (numbers, true, null, "quoted", [lists], {objects}) and is a string
// otherwise.
//
// Exit codes: 0 success; 1 the function raised an error; 2 usage; 3 the
// manifest was refused by the server's policy; 4 the server could not be
// reached; 5 unknown token, session or ended instance; 6 the function was
// stopped (a limit, a shutdown); 7 the server is busy; 8 other server
// errors; 9 the function has problems (check); 130 interrupted.
// docs/errors.md lists the messages.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/torbento/bento/internal/suggest"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/server"
)

const (
	exitOK          = 0
	exitFuncErr     = 1
	exitUsage       = 2
	exitRefused     = 3
	exitConnect     = 4
	exitNotFound    = 5
	exitKilled      = 6
	exitBusy        = 7
	exitServer      = 8
	exitProblems    = 9
	exitInterrupted = 130
)

const usage = `usage:
  bento new      NAME [--template hello|echo|dropbox]  create a function directory NAME from a template
  bento check    DIR [--json]                 check a function offline: its manifest and its code
  bento dev      [-i] [--policy BENTORC] [--storage DIR] DIR [ARG...]  run a function here, no server: the host API emulated under a policy (no sandbox: it runs as you)
  bento policy   SERVER [--check DIR] [--json]  show a server's node policy (and check a function against it)
  bento deploy   SERVER DIR [--destinations ITEMS] [--json]  upload a function and start an instance; prints its tokens
  bento invoke   [-i] SERVER TOKEN [ARG...]  call the function (-i: send stdin to it)
  bento attach   SERVER TOKEN SESSION [--offset N]  reattach to an invocation after a disconnect
  bento shutdown SERVER SHUTDOWN-TOKEN       end an instance
  bento run      [-i] SERVER DIR [ARG...]    deploy, invoke and shut down in one step
  bento run      [-i] --choose DIR [ARG...]  the same on a box chosen at random from the directory
  bento logs     SERVER TOKEN [--follow]    the function's own log (either token)
  bento update   SERVER SHUTDOWN-TOKEN DIR  replace an instance's code, keeping its tokens and storage
  bento ls       [--json]                   the instances deploy recorded in the local store
  bento forget   INSTANCE                   remove an instance from the local store
  bento boxes    [--check DIR] [--json]      list the boxes the Tor network's relays announce
  bento dust     up|ls|down|render           dust motes: a relay and a box that end (bento dust -h)
  bento shard    put|get|rm                  a file spread, encrypted, over n boxes, any k of which rebuild it (bento shard -h)
  bento compat   [-i] SERVER FILE CALL      the original Bento's way, over its protocol: store FILE, execute CALL (a Python call of literals), print its output (-i: stdin lines to it)
  bento completion bash|zsh|fish             a shell completion script

Flags may come anywhere among a command's arguments; everything after -- is an argument, never a
flag: function arguments that start with '-' go there (bento invoke SERVER TOKEN -- -1).
Commands that talk to a server take --timeout DURATION (default 60s; also a global option) for each request;
invoke, run, dev, deploy, policy and check take --json: the result as JSON on stdout, and an error as
one line {"error": MESSAGE, "code": EXIT-CODE} on stderr (where errors always go).

deploy and run record each instance's tokens in $XDG_STATE_HOME/bento/instances.json (default
~/.local/state/bento/, mode 0600): the tokens are secrets; --no-store or $BENTO_NO_STORE=1 writes
nothing. A token may be given as @INSTANCE, an id from bento ls (bento invoke SERVER @i-…).

Finding boxes (boxes, run --choose) needs --tor-socks and the control port of the same tor:
  --tor-control ADDR (default $BENTO_TOR_CONTROL or 127.0.0.1:9051), --tor-cookie FILE;
  that tor must fetch relay descriptors (UseMicrodescriptors 0).

Global options, before the command:
  --tor-socks ADDR   reach the server through tor's SocksPort ADDR (also $BENTO_TOR_SOCKS);
                     SERVER may then be an onion address (xyz.onion:8888) or a relay's address
  --tor-retry DUR    while a new onion service's descriptor spreads, keep trying for DUR
                     (default 60s; also $BENTO_TOR_RETRY; 0: fail at once)
  --pin sha256:HEX   the certificate pin of SERVER (also $BENTO_PIN): TLS 1.3 with that
                     certificate, any other refused; bentod logs its pin, and writes it to
                     DataDirectory/tls_fingerprint. SERVER#sha256:HEX pins one server.
  --insecure-cleartext  talk to a server beyond this machine without a pin, in cleartext
                     (without a pin bento speaks cleartext only over loopback or to .onion)

SERVER is HOST:PORT (default port 8888), or HOST:PORT#sha256:HEX. ARGs are JSON when they parse as JSON, strings otherwise.
Exit codes: 0 success, 1 the function raised an error, 2 usage, 3 refused by the policy,
4 server unreachable, 5 unknown token or session, 6 function stopped, 7 server busy,
8 other server errors, 9 the function has problems (check), 130 interrupted (docs/errors.md).
bento --version prints the release; COMMAND --help what a command takes.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runCtx(ctx, stop, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	ctx            context.Context
	// stopSignals gives Ctrl-C back its default: a second one ends bento
	// at once, while it cleans up after the first.
	stopSignals func()
	torSocks    string        // reach servers through this tor SocksPort
	transport   *transport    // --tor-socks, --tor-retry
	json        bool          // --json
	timeout     time.Duration // --timeout
	terminal    bool          // stdout is a terminal
	// stderrTerminal: stderr is a terminal, where progress is drawn.
	stderrTerminal bool
	synopsis       string // what the command takes, for its usage
	cmd            string // the command being run
	// jsonExtra is added to the JSON error a command ends with (what
	// the failure left behind, say), where that error does not set the
	// same fields.
	jsonExtra map[string]any
}

// run runs bento with args, without signal handling (tests).
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runCtx(context.Background(), func() {}, args, stdin, stdout, stderr)
}

// runCtx runs bento with args; ctx ends when the user interrupts.
func runCtx(ctx context.Context, stopSignals func(), args []string, stdin io.Reader, stdout, stderr io.Writer) int {
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
		fmt.Fprintf(stderr, "bento: %v\n(bento --help lists the commands and the global options)\n", err)
		return exitUsage
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, ctx: ctx, stopSignals: stopSignals, torSocks: tr.torSocks, transport: tr, timeout: cmp.Or(tr.timeout, defaultTimeout), terminal: isTerminal(stdout), stderrTerminal: isTerminal(stderr)}
	cmd, rest := args[0], args[1:]
	c.cmd = cmd
	switch cmd {
	case "new":
		return c.newCmd(rest)
	case "completion":
		return c.completion(rest)
	case "check":
		return c.check(rest)
	case "dev":
		return c.dev(rest)
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
	case "shard":
		return c.shard(rest)
	case "logs":
		return c.logs(rest)
	case "update":
		return c.update(rest)
	case "ls":
		return c.ls(rest)
	case "forget":
		return c.forget(rest)
	case "compat":
		return c.compatCmd(rest)
	}
	if near := suggest.Nearest(cmd, commands, 2); near != "" && !strings.HasPrefix(cmd, "-") {
		fmt.Fprintf(stderr, "bento: unknown command %q; did you mean %s? (bento --help lists the commands)\n", cmd, near)
		return exitUsage
	}
	fmt.Fprintf(stderr, "bento: unknown command %q (bento --help lists the commands)\n", cmd)
	return exitUsage
}

// commands are bento's commands, for "did you mean".
var commands = []string{"new", "completion", "check", "dev", "policy", "deploy", "invoke", "attach", "shutdown", "run", "boxes", "dust", "shard", "logs", "update", "ls", "forget", "compat"}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// usageErr reports a command given the wrong arguments.
func (c *cli) usageErr(format string, a ...any) int {
	if c.json {
		return c.errorf(exitUsage, nil, format, a...)
	}
	// One line that says what the command takes, and where to read more:
	// the whole usage, a screen and a half, buried it.
	fmt.Fprintf(c.stderr, "bento: "+format+"\n", a...)
	if c.cmd != "" {
		fmt.Fprintf(c.stderr, "(bento %s --help says more; bento --help lists the commands)\n", c.cmd)
	}
	return exitUsage
}

func serverAddr(s string) string {
	if !strings.Contains(s, ":") || strings.HasSuffix(s, "]") {
		return s + ":8888"
	}
	return s
}

// fail prints err and returns the matching exit code. after says, when
// the user interrupted, what became of what the command was doing.
func (c *cli) fail(err error, after string) int {
	if c.ctx.Err() != nil {
		return c.interrupted(after)
	}
	if code, ok := c.transportFail(err); ok {
		return code
	}
	var se *client.Error
	var ce *client.ConnError
	var xe *client.ExitError
	switch {
	case errors.As(err, &se):
		code := exitServer
		switch se.Code {
		case client.CodeRefused:
			code = exitRefused
		case client.CodeNotFound, client.CodeGone:
			code = exitNotFound
		case client.CodeBusy:
			code = exitBusy
		}
		if c.json {
			c.jsonError(code, "server refused: "+se.Message, map[string]any{"server_code": se.Code, "violations": se.Violations})
			return code
		}
		fmt.Fprintf(c.stderr, "bento: server refused: %s\n", clean(se.Message))
		for _, v := range se.Violations {
			fmt.Fprintf(c.stderr, "  %s: asks %s, policy allows %s\n", clean(v.Item), clean(v.Asked), clean(v.Allowed))
		}
		return code
	case errors.As(err, &ce):
		hint := ""
		if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "i/o timeout") {
			// What the request waited: through Tor at least --tor-retry,
			// which may be longer than --timeout.
			hint = fmt.Sprintf(" (no answer in %s; a slow server or Tor may need a longer --timeout)", c.requestTimeout())
		}
		return c.errorf(exitConnect, nil, "%v%s", ce, hint)
	case errors.As(err, &xe):
		return c.exitCode(xe.Exit)
	}
	return c.errorf(exitServer, nil, "%v", err)
}

// interrupted reports a Ctrl-C: what the command was doing when it came
// (after), and exits 130.
func (c *cli) interrupted(after string) int {
	msg := "interrupted"
	if after != "" {
		msg += "; " + after
	}
	return c.errorf(exitInterrupted, nil, "%s", msg)
}

func (c *cli) exitCode(e *client.Exit) int {
	switch e.Status {
	case client.StatusOK:
		return exitOK
	case client.StatusError:
		if c.json {
			c.jsonError(exitFuncErr, "function error: "+e.Error.Error(), map[string]any{"file": e.Error.File, "line": e.Error.Line, "col": e.Error.Col, "backtrace": e.Error.Backtrace})
			return exitFuncErr
		}
		fmt.Fprintf(c.stderr, "bento: function error: %s\n", clean(e.Error.Error()))
		if e.Error.Backtrace != "" {
			for _, l := range strings.Split(strings.TrimSpace(e.Error.Backtrace), "\n") {
				fmt.Fprintf(c.stderr, "%s\n", clean(l))
			}
		}
		return exitFuncErr
	}
	return c.errorf(exitKilled, nil, "function stopped: %s", clean(e.Reason))
}

// parseCode is the exit code for a flag parsing error: asking for help
// (-h, --help) is not a mistake.
func parseCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

func (c *cli) policy(args []string) int {
	fs := c.newFlags("policy", "SERVER [--check DIR] [--json] [--timeout DURATION]")
	check := fs.String("check", "", "function directory to check against the policy (offline first, as bento check does)")
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 {
		return c.usageErr("policy takes SERVER [--check DIR]")
	}
	var fn *client.Function
	if *check != "" {
		// The function must be sound before its policy matters: the
		// server would refuse code that does not compile too.
		f, probs := checkDir(*check)
		if len(probs) > 0 {
			return c.reportProblems(*check, probs)
		}
		fn = f
	}
	p, err := c.client(pos[0]).Policy(c.ctx)
	if err != nil {
		return c.fail(err, "")
	}
	if fn == nil {
		if c.json {
			b, _ := json.MarshalIndent(p, "", "  ")
			fmt.Fprintf(c.stdout, "%s\n", b)
		} else {
			printPolicy(c.stdout, p)
		}
		return exitOK
	}
	vs, err := fn.Check(p)
	if err != nil {
		return c.errorf(exitProblems, nil, "%v", err)
	}
	if c.json {
		b, _ := json.MarshalIndent(map[string]any{"dir": *check, "allowed": len(vs) == 0, "violations": nonNil(vs)}, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", b)
		if len(vs) > 0 {
			c.jsonError(exitRefused, "the server would refuse this function", nil)
			return exitRefused
		}
		return exitOK
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

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
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
		return nil, c.errorf(exitUsage, nil, "%v", notFunctionDir(dir, err))
	}
	if len(dests) > 0 {
		if err := fn.SetDestinations(dests); err != nil {
			return nil, c.errorf(exitUsage, nil, "%v", err)
		}
	}
	return fn, exitOK
}

const deployInterrupted = "the server may have started an instance whose tokens never reached you; it ends when its lifetime does"

func (c *cli) deploy(args []string) int {
	fs := c.newFlags("deploy", "SERVER DIR [--destinations ITEMS] [--json] [--timeout DURATION]")
	var dests destFlag
	fs.Var(&dests, "destinations", "replace the manifest's destinations (e.g. \"accept 127.0.0.1:8080\")")
	skip := addNoStore(fs)
	c.addJSON(fs)
	c.addTimeout(fs)
	args, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(args) != 2 {
		return c.usageErr("deploy takes SERVER DIR [--destinations ITEMS]")
	}
	fn, code := c.loadFunction(args[1], dests)
	if fn == nil {
		return code
	}
	cl := c.client(args[0])
	pr := c.uploadProgress(cl, fn)
	d, err := cl.Deploy(c.ctx, fn)
	pr.finish()
	if err != nil {
		return c.fail(err, deployInterrupted)
	}
	e := entryFor(serverAddr(args[0]), fn, d)
	if c.terminal && !c.json {
		// Someone reading: words. Into a pipe or a file (a script),
		// the tokens are JSON with or without --json, as ever.
		c.deployedText(args[0], e, *skip)
	} else {
		out := map[string]any{"instance": d.Instance, "invocation_token": d.InvocationToken, "shutdown_token": d.ShutdownToken}
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", b)
	}
	c.remember(*skip, e)
	return exitOK
}

// deployedText tells someone at a terminal what deploy made: the
// instance, its two tokens and what each is for, and what to do next.
func (c *cli) deployedText(server string, e storeEntry, unstored bool) {
	name := e.Function
	if name == "" {
		name = "the function"
	}
	fmt.Fprintf(c.stdout, "deployed %s as instance %s", clean(name), e.Instance)
	if !e.EndsAt.IsZero() {
		fmt.Fprintf(c.stdout, " (it ends in %s unless shut down before)", e.EndsAt.Sub(e.DeployedAt).Round(time.Second))
	}
	fmt.Fprintf(c.stdout, "\n  invocation token  %s\n    share it with whoever may call the function\n  shutdown token    %s\n    keep it to yourself: it ends the instance, updates its code and reads its log\n", e.InvocationToken, e.ShutdownToken)
	ref := e.InvocationToken
	if !unstored {
		ref = "@" + e.Instance
		fmt.Fprintf(c.stdout, "both are kept in bento's local store (bento ls); @%s stands for either\n", e.Instance)
	}
	fmt.Fprintf(c.stdout, "next: bento invoke %s %s [ARG...]\n", server, ref)
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

// keepsRunning is what becomes of an invocation that invoke or attach
// leaves: the function goes on, and the session can be reattached.
func keepsRunning(cl *client.Client, s *client.Session) string {
	return fmt.Sprintf("the function keeps running on the server.\nbento: reattach with: bento attach %s INVOCATION-TOKEN %s --offset %d", serverArg(cl), s.ID, s.Offset)
}

func (c *cli) invoke(args []string) int {
	fs := c.newFlags("invoke", "[-i] SERVER INVOCATION-TOKEN [ARG...] [--json] [--timeout DURATION]")
	interactive := fs.Bool("i", false, "send standard input to the function")
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	tok, code := c.serverToken("invoke", pos, len(pos) >= 2, "[-i] SERVER INVOCATION-TOKEN [ARG...]", false)
	if code >= 0 {
		return code
	}
	cl := c.client(pos[0])
	s, err := cl.Invoke(c.ctx, tok, parseArgs(pos[2:])...)
	if err != nil {
		return c.fail(err, "the invocation may have started on the server; its session id never reached you")
	}
	return c.stream(cl, s, *interactive, func(s *client.Session) string { return keepsRunning(cl, s) }, func(s *client.Session) string { return keepsRunning(cl, s) })
}

func (c *cli) attach(args []string) int {
	fs := c.newFlags("attach", "SERVER INVOCATION-TOKEN SESSION [--offset N] [-i] [--json] [--timeout DURATION]")
	offset := fs.Int64("offset", 0, "resume output at this offset (printed when a session is interrupted)")
	interactive := fs.Bool("i", false, "send standard input to the function")
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	tok, code := c.serverToken("attach", pos, len(pos) == 3, "SERVER INVOCATION-TOKEN SESSION [--offset N]", false)
	if code >= 0 {
		return code
	}
	cl := c.client(pos[0])
	s, err := cl.Attach(c.ctx, tok, pos[2], *offset)
	if err != nil {
		return c.fail(err, "the function, if it runs, keeps running on the server")
	}
	return c.stream(cl, s, *interactive, func(s *client.Session) string { return keepsRunning(cl, s) }, func(s *client.Session) string { return keepsRunning(cl, s) })
}

// reattachHintAfter is how long a session runs, with stderr a terminal,
// before bento says how to reattach to it.
const reattachHintAfter = 2 * time.Second

// stream copies session output to stdout (and stdin to the session). The
// session's id goes to stderr first, so that even a client killed outright
// can be reattached. onInterrupt and onDisconnect say what becomes of the
// function when the user interrupts or the connection fails.
func (c *cli) stream(cl *client.Client, s *client.Session, interactive bool, onInterrupt, onDisconnect func(*client.Session) string) int {
	s.OnNotice = func(n client.Notice) { fmt.Fprintf(c.stderr, "bento: notice from the box: %s\n", clean(n.Message)) }
	defer s.Close()
	if !c.json {
		hint := func() {
			fmt.Fprintf(c.stderr, "bento: session %s started; reattach with: bento attach %s INVOCATION-TOKEN %s\n", s.ID, serverArg(cl), s.ID)
		}
		if c.stderrTerminal {
			// Someone watching: a call that answers at once needs no
			// way back to it, one still running after a moment does
			// (and an interrupt or a disconnect says it in any case).
			t := time.AfterFunc(reattachHintAfter, hint)
			defer t.Stop()
		} else {
			// A log or a script's: at once, so that even a client
			// killed outright can be reattached.
			hint()
		}
	}
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
	var out []byte // with --json: all of it, printed at the end
	last := byte('\n')
	// Output going to a file or a pipe: its progress on the terminal.
	dl := newProgress(c.stderr, c.stderrTerminal && !c.terminal && !c.json, "received", 0)
	defer dl.finish()
	for {
		data, exit, err := s.Recv()
		dl.add(len(data))
		if err != nil {
			if c.ctx.Err() != nil {
				return c.interrupted(onInterrupt(s))
			}
			return c.errorf(exitConnect, map[string]any{"session": s.ID, "offset": s.Offset}, "disconnected from session %s (%v); %s", s.ID, err, onDisconnect(s))
		}
		if exit != nil {
			if c.json {
				res := map[string]any{"session": s.ID, "status": exit.Status}
				if utf8.Valid(out) {
					res["output"] = string(out)
				} else {
					res["output_base64"] = out
				}
				b, _ := json.Marshal(res)
				fmt.Fprintf(c.stdout, "%s\n", b)
			} else if c.terminal && last != '\n' {
				// A returned value ends its line on a terminal; into a
				// pipe or a file, output is exactly the function's.
				fmt.Fprintln(c.stdout)
			}
			return c.exitCode(exit)
		}
		if len(data) == 0 {
			continue
		}
		if c.json {
			out = append(out, data...)
			continue
		}
		last = data[len(data)-1]
		if _, err := c.stdout.Write(data); err != nil {
			return exitServer
		}
	}
}

func (c *cli) shutdown(args []string) int {
	fs := c.newFlags("shutdown", "SERVER SHUTDOWN-TOKEN [--timeout DURATION]")
	skip := addNoStore(fs)
	c.addTimeout(fs)
	args, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	tok, code := c.serverToken("shutdown", args, len(args) == 2, "SERVER SHUTDOWN-TOKEN", true)
	if code >= 0 {
		return code
	}
	if err := c.client(args[0]).Shutdown(c.ctx, tok); err != nil {
		return c.fail(err, "the instance may or may not have been shut down; run the same command again to be sure (exit 5 once it is gone)")
	}
	c.forgetToken(*skip, serverAddr(args[0]), tok)
	return exitOK
}

func (c *cli) runCmd(args []string) int {
	fs := c.newFlags("run", "[-i] [--destinations ITEMS] SERVER DIR [ARG...] [--json] [--timeout DURATION], or --choose DIR [ARG...]")
	interactive := fs.Bool("i", false, "send standard input to the function")
	var dests destFlag
	fs.Var(&dests, "destinations", "replace the manifest's destinations")
	choose := fs.Bool("choose", false, "choose the box from the directory instead of naming one")
	skip := addNoStore(fs)
	tf := addTorControlFlags(fs)
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
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
			if c.ctx.Err() != nil {
				return c.interrupted("")
			}
			return c.errorf(exitRefused, nil, "%v", err)
		}
		fmt.Fprintf(c.stderr, "bento: chose box %s beside relay %s (%s)\n", box.Addr(), clean(box.Relay.Nickname), box.Relay.Fingerprint)
		pos[0] = box.Addr()
	}
	cl := c.client(pos[0])
	pr := c.uploadProgress(cl, fn)
	d, err := cl.Deploy(c.ctx, fn)
	pr.finish()
	if err != nil {
		return c.fail(err, deployInterrupted)
	}
	// Recorded while it lives: if bento cannot shut it down (a lost
	// connection, a second Ctrl-C), bento ls still knows its tokens.
	c.remember(*skip, entryFor(serverAddr(pos[0]), fn, d))
	// bento run leaves no instance behind: whatever ends the session,
	// the instance is shut down, and what is said about it is what
	// happened.
	shutdown := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cl.Shutdown(ctx, d.ShutdownToken); err != nil && !client.IsCode(err, client.CodeNotFound) {
			return err
		}
		c.forgetToken(*skip, serverAddr(pos[0]), d.ShutdownToken)
		return nil
	}
	ended := func(*client.Session) string {
		c.stopSignals() // a second Ctrl-C ends bento at once
		if err := shutdown(); err != nil {
			return fmt.Sprintf("shutting down instance %s failed (%v); it ends when its lifetime does", d.Instance, err)
		}
		return fmt.Sprintf("instance %s was shut down (bento run leaves no instance behind)", d.Instance)
	}
	s, err := cl.Invoke(c.ctx, d.InvocationToken, parseArgs(pos[2:])...)
	if err != nil {
		if c.ctx.Err() != nil {
			return c.interrupted(ended(nil))
		}
		code := c.fail(err, "")
		if err := shutdown(); err != nil {
			fmt.Fprintf(c.stderr, "bento: shutting down instance %s: %v\n", d.Instance, err)
		}
		return code
	}
	code = c.stream(cl, s, *interactive, ended, ended)
	if code != exitInterrupted && code != exitConnect {
		if err := shutdown(); err != nil {
			fmt.Fprintf(c.stderr, "bento: shutting down instance %s: %v\n", d.Instance, err)
		}
	}
	return code
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
	if p.FSProtect != "" {
		how := "keys held in " + clean(p.FSProtect)
		if p.FSProtect == policy.KeyHolderMemory {
			how = "keys held in bentod's memory, nothing attested: protects stored data from whoever reads the disk later, not from the operator"
		}
		fmt.Fprintf(w, "fs protect   %s\n", how)
	}
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
