package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/torbento/bento/client/compat"
)

// compatCmd runs a function the original Bento's way, over its protocol
// (a bentod's CompatListenAddress, or an original Bento server): store
// FILE's code, execute CALL, open it and stream its output; with -i,
// each line of standard input is sent to it (without its newline, as the
// original's interactive clients do).
func (c *cli) compatCmd(args []string) int {
	fs := c.newFlags("compat", "[-i] SERVER FILE CALL [--timeout DURATION]")
	interactive := fs.Bool("i", false, "send each line of standard input to the function")
	c.addTimeout(fs)
	pos, code, err := c.parseFlags(fs, args)
	if err != nil {
		return code
	}
	if len(pos) != 3 {
		return c.usageErr("compat takes [-i] SERVER FILE CALL (e.g. bento compat 127.0.0.1:8887 hello.py \"hello('world')\")")
	}
	server, file, call := pos[0], pos[1], pos[2]
	if strings.Contains(server, "#") || c.transport != nil && c.transport.pin != "" {
		return c.usageErr("the original Bento's protocol has no TLS: give SERVER without a pin (over a network, tunnel it)")
	}
	code0, err := os.ReadFile(file)
	if err != nil {
		return c.errorf(exitUsage, nil, "%v", err)
	}
	name := strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
	cl := c.newClient(server)
	dial := func(ctx context.Context) (net.Conn, error) {
		if cl.Dialer != nil {
			return cl.Dialer.DialContext(ctx, "tcp", cl.Addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", cl.Addr)
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.requestTimeout())
	nc, err := dial(ctx)
	cancel()
	if err != nil {
		if code, ok := c.transportFail(err); ok {
			return code
		}
		return c.errorf(exitConnect, nil, "connection to server: %v", err)
	}
	defer nc.Close()
	context.AfterFunc(c.ctx, func() { nc.Close() })
	conn := compat.New(nc)
	request := func(what string, f func() (string, error)) (string, int) {
		nc.SetDeadline(time.Now().Add(c.requestTimeout()))
		v, err := f()
		nc.SetDeadline(time.Time{})
		if err == nil {
			return v, -1
		}
		if c.ctx.Err() != nil {
			return "", c.interrupted("")
		}
		var se *compat.ServerError
		if errors.As(err, &se) {
			code := exitRefused
			switch {
			case se.Msg == "invalid token":
				code = exitNotFound
			case strings.HasPrefix(se.Msg, "busy"):
				code = exitBusy
			}
			return "", c.errorf(code, nil, "server refused the %s: %s", what, clean(se.Msg))
		}
		return "", c.errorf(exitConnect, nil, "connection to server: %v", err)
	}
	tok, code := request("store", func() (string, error) { return conn.Store(name, string(code0)) })
	if code >= 0 {
		return code
	}
	id, code := request("execute", func() (string, error) { return conn.Execute(call, tok) })
	if code >= 0 {
		return code
	}
	fmt.Fprintf(c.stderr, "bento: function id %s\n", id)
	if err := conn.Open(id); err != nil {
		return c.errorf(exitConnect, nil, "connection to server: %v", err)
	}
	if *interactive {
		go func() {
			sc := bufio.NewScanner(c.stdin)
			sc.Buffer(make([]byte, 64<<10), compatMaxLine)
			for sc.Scan() {
				if conn.SendInput(id, sc.Bytes()) != nil {
					return
				}
			}
		}()
	}
	failed := false
	for {
		data, typ, err := conn.RecvOutput()
		if err != nil {
			if c.ctx.Err() != nil {
				return c.interrupted("the function runs on; open it again with its id to read the rest")
			}
			return c.errorf(exitConnect, nil, "connection to server: %v", err)
		}
		switch typ {
		case compat.Output:
			c.stdout.Write(data)
		case compat.Error:
			failed = true
			fmt.Fprintf(c.stderr, "bento: the function failed: %s\n", clean(strings.TrimSpace(string(data))))
		case compat.FunctionErr:
			if string(data) != "function dead" {
				return c.errorf(exitServer, nil, "server: %s", clean(string(data)))
			}
			conn.Close(id)
			if failed {
				return exitFuncErr
			}
			return exitOK
		}
	}
}

// compatMaxLine bounds a line of input (the listener takes 256 KB).
const compatMaxLine = 256 << 10
