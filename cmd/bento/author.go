package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/manifest"
)

// The author's loop: logs, update, ls, forget, and tokens named by the
// instance's id in the local store (@i-…).

// addNoStore adds --no-store to a command that records instances.
func addNoStore(fs *flag.FlagSet) *bool {
	var b bool
	fs.BoolVar(&b, "no-store", false, "keep no record of the instance's tokens on disk (also $BENTO_NO_STORE=1)")
	return &b
}

// entryFor is what the store keeps of a deployed instance.
func entryFor(server string, fn *client.Function, d *client.Deployed) storeEntry {
	e := storeEntry{Server: server, Instance: d.Instance, InvocationToken: d.InvocationToken, ShutdownToken: d.ShutdownToken, DeployedAt: time.Now().UTC()}
	if m, err := manifest.Parse(fn.Manifest); err == nil {
		e.Function = m.Name
	}
	var r struct {
		Lifetime time.Duration `json:"lifetime_ns"`
	}
	if json.Unmarshal(d.Resources, &r) == nil && r.Lifetime > 0 {
		e.EndsAt = e.DeployedAt.Add(r.Lifetime)
	}
	return e
}

// resolveToken turns @ID into the token of that instance from the local
// store (the shutdown token if shutdown, else the invocation token); any
// other token is returned as it is. The int is an exit code, -1 if none.
func (c *cli) resolveToken(server, tok string, shutdown bool) (string, int) {
	id, ok := strings.CutPrefix(tok, "@")
	if !ok {
		return tok, -1
	}
	e, err := lookupEntry(serverAddr(server), id)
	if err != nil {
		return "", c.errorf(exitUsage, nil, "reading the local store of instances: %v", err)
	}
	if e == nil {
		return "", c.errorf(exitNotFound, nil, "no instance %q in the local store (bento ls lists them)", clean(id))
	}
	if shutdown {
		return e.ShutdownToken, -1
	}
	return e.InvocationToken, -1
}

func (c *cli) logs(args []string) int {
	fs := c.newFlags("logs", "SERVER TOKEN [--follow] [--offset N] [--timeout DURATION]")
	follow := fs.Bool("follow", false, "keep printing new lines until Ctrl-C or the instance ends")
	fs.BoolVar(follow, "f", false, "the same as --follow")
	offset := fs.Int64("offset", 0, "start at this offset of the log (0: the oldest line kept)")
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 2 {
		return c.usageErr("logs takes SERVER TOKEN (the invocation or the shutdown token) [--follow]")
	}
	tok, code := c.resolveToken(pos[0], pos[1], false)
	if code >= 0 {
		return code
	}
	cl := c.client(pos[0])
	l, err := cl.Logs(c.ctx, tok, *follow, *offset)
	if err != nil {
		return c.fail(err, "")
	}
	defer l.Close()
	var partial []byte // a line not yet ended, printed once it is
	// The log holds what the function's callers made it write: nothing
	// unprintable reaches the terminal.
	flush := func(all bool) {
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				if len(partial) > 0 && (all || len(partial) > 8<<10) {
					fmt.Fprintln(c.stdout, clean(string(partial)))
					partial = nil
				}
				return
			}
			fmt.Fprintln(c.stdout, clean(string(partial[:i])))
			partial = partial[i+1:]
		}
	}
	for {
		data, skipped, end, err := l.Recv()
		if err != nil {
			flush(true)
			if c.ctx.Err() != nil {
				return exitOK // Ctrl-C is how a follow ends
			}
			var pe *client.Error
			if errors.As(err, &pe) {
				// bentod refused (an unknown token, busy): not a
				// disconnection, and --offset would not help.
				return c.fail(err, "")
			}
			return c.errorf(exitConnect, map[string]any{"offset": l.Offset}, "disconnected while reading the log (%v); go on with --offset %d", err, l.Offset)
		}
		if skipped > 0 {
			flush(true)
			fmt.Fprintf(c.stderr, "bento: %d bytes of the log are no longer kept (the server keeps its newest 64 KB)\n", skipped)
		}
		if end != nil {
			flush(true)
			if end.Ended {
				fmt.Fprintf(c.stderr, "bento: the instance has ended (%s); its log ends here\n", clean(end.Reason))
			}
			return exitOK
		}
		partial = append(partial, data...)
		flush(false)
	}
}

func (c *cli) update(args []string) int {
	fs := c.newFlags("update", "SERVER SHUTDOWN-TOKEN DIR [--destinations ITEMS] [--json] [--timeout DURATION]")
	var dests destFlag
	fs.Var(&dests, "destinations", "replace the manifest's destinations (e.g. \"accept 127.0.0.1:8080\")")
	skip := addNoStore(fs)
	c.addJSON(fs)
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	tok, code := c.serverToken("update", pos, len(pos) == 3, "SERVER SHUTDOWN-TOKEN DIR", true)
	if code >= 0 {
		return code
	}
	fn, probs := checkDir(pos[2])
	if len(probs) > 0 {
		return c.reportProblems(pos[2], probs)
	}
	if len(dests) > 0 {
		if err := fn.SetDestinations(dests); err != nil {
			return c.errorf(exitUsage, nil, "%v", err)
		}
	}
	u, err := c.client(pos[0]).Update(c.ctx, tok, fn)
	if err != nil {
		return c.fail(err, "the update may or may not have been applied; bento logs or invoke tells which code answers")
	}
	// The store learns the new function's name and end.
	_ = c.withStore(*skip, func(s *localStore) error {
		return s.change(func(es []storeEntry) []storeEntry {
			for i := range es {
				if es[i].Server == serverAddr(pos[0]) && es[i].Instance == u.Instance {
					if m, err := manifest.Parse(fn.Manifest); err == nil {
						es[i].Function = m.Name
					}
					es[i].EndsAt = u.EndsAt.UTC()
				}
			}
			return es
		})
	})
	if c.json {
		b, _ := json.MarshalIndent(u, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", b)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "bento: instance %s updated: the new code answers from the next invocation (%d running invocation(s) ended); it ends at %s\n", clean(u.Instance), u.Ended, u.EndsAt.Local().Format(time.RFC3339))
	return exitOK
}

func (c *cli) ls(args []string) int {
	fs := c.newFlags("ls", "[--json]")
	c.addJSON(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 0 {
		return c.usageErr("ls takes no arguments")
	}
	var es []storeEntry
	path, _ := storePath()
	err = c.withStore(false, func(s *localStore) error {
		var err error
		es, err = s.read()
		return err
	})
	if err != nil {
		return c.errorf(exitUsage, nil, "reading the local store of instances: %v", err)
	}
	now := time.Now()
	if c.json {
		type row struct {
			storeEntry
			Ended bool `json:"ended"`
		}
		out := []row{}
		for _, e := range es {
			out = append(out, row{e, !e.EndsAt.IsZero() && now.After(e.EndsAt)})
		}
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", b)
		return exitOK
	}
	if len(es) == 0 {
		fmt.Fprintf(c.stderr, "bento: no instances recorded in %s\n", path)
		return exitOK
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tFUNCTION\tSERVER\tDEPLOYED\tENDS")
	for _, e := range es {
		ends := "?"
		if !e.EndsAt.IsZero() {
			ends = e.EndsAt.Local().Format("2006-01-02 15:04:05")
			if now.After(e.EndsAt) {
				ends += " (ended)"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", clean(e.Instance), clean(e.Function), clean(e.Server), e.DeployedAt.Local().Format("2006-01-02 15:04:05"), ends)
	}
	w.Flush()
	return exitOK
}

func (c *cli) forget(args []string) int {
	fs := c.newFlags("forget", "INSTANCE [--server SERVER]")
	server := fs.String("server", "", "only the instance of this server (ids are per server)")
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 1 {
		return c.usageErr("forget takes INSTANCE (an id bento ls lists)")
	}
	id := strings.TrimPrefix(pos[0], "@")
	srv := ""
	if *server != "" {
		srv = serverAddr(*server)
	}
	found, err := c.forgetEntry(srv, id)
	if err != nil {
		return c.errorf(exitUsage, nil, "changing the local store of instances: %v", err)
	}
	if !found {
		return c.errorf(exitNotFound, nil, "no instance %q in the local store (bento ls lists them)", clean(id))
	}
	return exitOK
}
