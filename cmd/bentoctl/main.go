// Command bentoctl is the relay operator's control of a running bentod,
// through its control socket (ControlSocket in bentorc): its status, the
// instances it runs, ending one of them with a reason its clients are
// told, draining the box, reloading and stopping bentod, and a live view.
//
// Usage:
//
//	bentoctl [-s SOCKET | -f BENTORC] [--json] [--timeout D] COMMAND [ARGS]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/torbento/bento/internal/control"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/server"
)

// defaultSocket is where the package's bentorc puts the control socket.
const defaultSocket = "/run/bento/control"

const usage = `usage: bentoctl [-s SOCKET | -f BENTORC] [--json] [--timeout D] COMMAND [ARGS]

Commands:
  status                 bentod's version, uptime, instances, memory and connections
  ls                     the instances: id, function, client (scrubbed), age, end, resources
  end ID REASON...       end an instance; its clients are told the reason
  drain [on|off]         refuse new functions (on, the default) or take them again (off)
  reload                 read bentorc again, as SIGHUP does; says why if it cannot
  stop                   end every instance and stop bentod
  top [-i INTERVAL]      a live view of status and instances (q or Ctrl-C quits)

The socket is -s, else ControlSocket in the bentorc given with -f, else
$BENTO_CONTROL_SOCKET, else ` + defaultSocket + `.
Exit status: 0 done, 1 bentod refused or failed, 2 usage, 3 bentod unreachable.
`

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

type ctl struct {
	socket  string
	json    bool
	timeout time.Duration
	stdin   io.Reader
	out     io.Writer
	errw    io.Writer
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bentoctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("s", "", "the control socket")
	conf := fs.String("f", "", "read ControlSocket from this bentorc")
	asJSON := fs.Bool("json", false, "print answers as JSON")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for bentod")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "bentoctl: %v\n%s", err, usage)
		return 2
	}
	c := &ctl{json: *asJSON, timeout: *timeout, stdin: stdin, out: stdout, errw: stderr}
	switch {
	case *socket != "":
		c.socket = *socket
	case *conf != "":
		// Only ControlSocket is read: a mistake elsewhere in the file is
		// bentod's to report (bentoctl reload says it), not a reason to
		// lose the control of a bentod that runs.
		v, ok, err := policy.LookupValue(*conf, "ControlSocket")
		if err != nil {
			fmt.Fprintf(stderr, "bentoctl: %v\n", err)
			return 2
		}
		if !ok || v == "0" || strings.EqualFold(v, "none") {
			fmt.Fprintf(stderr, "bentoctl: %s has no ControlSocket: add \"ControlSocket %s\" and restart bentod\n", *conf, defaultSocket)
			return 2
		}
		c.socket = v
	case os.Getenv("BENTO_CONTROL_SOCKET") != "":
		c.socket = os.Getenv("BENTO_CONTROL_SOCKET")
	default:
		c.socket = defaultSocket
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := rest[0], rest[1:]
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "status":
		return c.status(rest)
	case "ls", "list":
		return c.ls(rest)
	case "end":
		if len(rest) < 2 {
			return c.usageErr("end needs an instance id and a reason: bentoctl end i-0123abcd \"abuse: scanning\"")
		}
		return c.simple(control.Request{Cmd: "end", ID: rest[0], Reason: strings.Join(rest[1:], " ")}, "ended "+rest[0])
	case "drain":
		on := true
		switch {
		case len(rest) == 0, len(rest) == 1 && rest[0] == "on":
		case len(rest) == 1 && rest[0] == "off":
			on = false
		default:
			return c.usageErr("drain takes on or off")
		}
		msg := "draining: new functions are refused, running ones go on"
		if !on {
			msg = "not draining: new functions are taken"
		}
		return c.simple(control.Request{Cmd: "drain", On: &on}, msg)
	case "reload":
		if len(rest) > 0 {
			return c.usageErr("reload takes no arguments")
		}
		return c.simple(control.Request{Cmd: "reload"}, "reloaded")
	case "stop":
		if len(rest) > 0 {
			return c.usageErr("stop takes no arguments")
		}
		return c.simple(control.Request{Cmd: "stop"}, "bentod is stopping")
	case "top":
		return c.top(rest)
	}
	return c.usageErr(fmt.Sprintf("unknown command %q", cmd))
}

func (c *ctl) usageErr(msg string) int {
	fmt.Fprintf(c.errw, "bentoctl: %s\n%s", msg, usage)
	return 2
}

// call sends one request; the exit code tells bentod's refusal (1) from
// a bentod that cannot be reached (3).
func (c *ctl) call(req control.Request, out any) int {
	err := control.Call(c.socket, req, out, c.timeout)
	if err == nil {
		return 0
	}
	code := 1
	if strings.Contains(err.Error(), c.socket) {
		code = 3
	}
	if c.json {
		b, _ := json.Marshal(map[string]any{"error": err.Error(), "code": code})
		fmt.Fprintf(c.errw, "%s\n", b)
	} else {
		fmt.Fprintf(c.errw, "bentoctl: %v\n", err)
	}
	return code
}

func (c *ctl) simple(req control.Request, msg string) int {
	var res any
	if code := c.call(req, &res); code != 0 {
		return code
	}
	if c.json {
		b, _ := json.Marshal(res)
		fmt.Fprintf(c.out, "%s\n", b)
		return 0
	}
	fmt.Fprintln(c.out, msg)
	return 0
}

func (c *ctl) status(args []string) int {
	if len(args) > 0 {
		return c.usageErr("status takes no arguments")
	}
	var raw json.RawMessage
	if code := c.call(control.Request{Cmd: "status"}, &raw); code != 0 {
		return code
	}
	if c.json {
		fmt.Fprintf(c.out, "%s\n", raw)
		return 0
	}
	var st control.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		fmt.Fprintf(c.errw, "bentoctl: bentod's status: %v\n", err)
		return 1
	}
	writeStatus(c.out, st)
	return 0
}

func writeStatus(w io.Writer, st control.Status) {
	name := st.Nickname
	if name == "" {
		name = "bentod"
	}
	fmt.Fprintf(w, "%s (%s, pid %d), up %s\n", name, st.Version, st.PID, fmtAge(st.Uptime))
	if st.Onion != "" {
		fmt.Fprintf(w, "onion service: %s.onion\n", st.Onion)
	}
	state := "taking new functions"
	if st.Draining {
		state = "DRAINING: new functions are refused"
	}
	fmt.Fprintf(w, "instances: %d of %d, %s\n", st.Instances, st.MaxInstances, state)
	fmt.Fprintf(w, "functions' limits: %s memory, %g cores; in flight %s of %s; bentod's heap %s, %d goroutines\n",
		human(st.MemoryLimit), st.CPULimit, human(st.InFlight), human(st.InFlightLimit), human(int64(st.HeapBytes)), st.Goroutines)
	for _, l := range st.Listeners {
		fmt.Fprintf(w, "listener %-8s %d open, %d accepted, %d refused, %s in, %s out\n", l.Name, l.Open, l.Accepted,
			l.RefusedTotal+l.RefusedPerAddr+l.RefusedRate, human(l.BytesIn), human(l.BytesOut))
	}
}

func (c *ctl) ls(args []string) int {
	if len(args) > 0 {
		return c.usageErr("ls takes no arguments")
	}
	var raw json.RawMessage
	if code := c.call(control.Request{Cmd: "ls"}, &raw); code != 0 {
		return code
	}
	if c.json {
		fmt.Fprintf(c.out, "%s\n", raw)
		return 0
	}
	var list []server.InstanceInfo
	if err := json.Unmarshal(raw, &list); err != nil {
		fmt.Fprintf(c.errw, "bentoctl: bentod's list: %v\n", err)
		return 1
	}
	writeList(c.out, list, time.Now())
	return 0
}

func writeList(w io.Writer, list []server.InstanceInfo, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no instances")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFUNCTION\tCLIENT\tAGE\tENDS IN\tSTATE\tMEMORY\tCPU\tSTORAGE\tSESSIONS")
	for _, i := range list {
		// An instance that ended (its end reason, kept a while for its
		// clients) ends in nothing: its lifetime's end no longer applies.
		endsIn := fmtAge(i.EndsAt.Sub(now))
		switch i.State {
		case "ended":
			endsIn = "-"
		case "ending":
			endsIn = "now"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%d\n", i.ID, clip(i.Function, 24), i.Client, fmtAge(now.Sub(i.Created)), endsIn,
			i.State, human(i.MemoryUsed), human(i.MemoryReserved), i.CPUUsed.Round(time.Millisecond), human(i.StorageUsed), i.Sessions)
	}
	tw.Flush()
}

// clip shortens a name a client chose, and keeps control characters out
// of the operator's terminal.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return '?'
		}
		return r
	}, s)
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// human renders a size for reading, to a tenth of its unit.
func human(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "KB", "MB", "GB"} {
		if f < 1024 {
			if u == "B" {
				return fmt.Sprintf("%d B", n)
			}
			return fmt.Sprintf("%.1f %s", f, u)
		}
		f /= 1024
	}
	return fmt.Sprintf("%.1f TB", f)
}

func fmtAge(d time.Duration) string {
	if d < 0 {
		return "now"
	}
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// top redraws status and instances every interval until q or Ctrl-C.
func (c *ctl) top(args []string) int {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	every := fs.Duration("i", 2*time.Second, "refresh interval")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return c.usageErr("top takes -i INTERVAL only")
	}
	if *every < 100*time.Millisecond {
		return c.usageErr("top -i: at least 100ms")
	}
	if f, ok := c.out.(*os.File); !ok || !isTerminal(f) {
		return c.usageErr("top draws on a terminal; for a script, use bentoctl --json status and bentoctl --json ls")
	}
	restore := rawTerminal(c.stdin)
	defer restore()
	quit := make(chan struct{})
	go func() {
		b := make([]byte, 1)
		for {
			n, err := c.stdin.Read(b)
			if err != nil {
				return
			}
			if n == 1 && (b[0] == 'q' || b[0] == 'Q' || b[0] == 3) {
				close(quit)
				return
			}
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	t := time.NewTicker(*every)
	defer t.Stop()
	for {
		var b strings.Builder
		b.WriteString("\x1b[H\x1b[2J")
		fmt.Fprintf(&b, "bentoctl top — %s — every %s — q quits\r\n\r\n", c.socket, *every)
		var st control.Status
		var list []server.InstanceInfo
		err := control.Call(c.socket, control.Request{Cmd: "status"}, &st, c.timeout)
		if err == nil {
			err = control.Call(c.socket, control.Request{Cmd: "ls"}, &list, c.timeout)
		}
		if err != nil {
			fmt.Fprintf(&b, "bentod is not answering: %v\r\n(retrying)\r\n", err)
		} else {
			var body strings.Builder
			writeStatus(&body, st)
			body.WriteString("\n")
			writeList(&body, list, time.Now())
			b.WriteString(strings.ReplaceAll(body.String(), "\n", "\r\n"))
		}
		io.WriteString(c.out, b.String())
		select {
		case <-quit:
			io.WriteString(c.out, "\r\n")
			return 0
		case <-sigs:
			io.WriteString(c.out, "\r\n")
			return 130
		case <-t.C:
		}
	}
}
