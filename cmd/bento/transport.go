package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/pintls"
	"github.com/torbento/bento/internal/socks"
)

// transport is how bento reaches servers: the global options before the
// command.
type transport struct {
	torSocks  string        // --tor-socks, $BENTO_TOR_SOCKS: through this tor SocksPort
	torRetry  time.Duration // --tor-retry, $BENTO_TOR_RETRY: while an onion service's descriptor spreads
	retryNote sync.Once     // the retry is said once a run
	// pin (--pin, $BENTO_PIN) is the certificate pin of a server named
	// without one (SERVER#sha256:...).
	pin string
	// insecure (--insecure-cleartext) allows cleartext beyond loopback.
	insecure      bool
	cleartextNote sync.Once // its warning is said once a run
	// timeout (--timeout before the command) is every request's, unless
	// the command's own --timeout says otherwise.
	timeout time.Duration
}

// torTimeout is the least time a request through Tor gets: the
// descriptor retries come out of it.
func (t *transport) torTimeout() time.Duration { return max(60*time.Second, t.torRetry+30*time.Second) }

// defaultTorRetry is how long bento waits by default for a new onion
// service's descriptor to reach the directories.
const defaultTorRetry = 60 * time.Second

// parseTransport reads the global options at the head of args and
// returns the rest.
func parseTransport(args []string) (*transport, []string, error) {
	t := &transport{torSocks: os.Getenv("BENTO_TOR_SOCKS"), torRetry: defaultTorRetry}
	if v := os.Getenv("BENTO_TOR_RETRY"); v != "" {
		d, err := parseRetry(v)
		if err != nil {
			return nil, nil, fmt.Errorf("$BENTO_TOR_RETRY: %v", err)
		}
		t.torRetry = d
	}
	if v := os.Getenv("BENTO_PIN"); v != "" {
		p, err := pintls.ParsePin(v)
		if err != nil {
			return nil, nil, fmt.Errorf("$BENTO_PIN: %v", err)
		}
		t.pin = p
	}
	for len(args) > 0 {
		name, val, hasVal := strings.Cut(args[0], "=")
		switch name {
		case "--tor-socks", "--tor-retry", "--pin", "--timeout":
		case "--insecure-cleartext":
			if hasVal {
				return nil, nil, errors.New("--insecure-cleartext takes no value")
			}
			t.insecure, args = true, args[1:]
			continue
		default:
			return t, args, nil
		}
		if !hasVal {
			if len(args) < 2 {
				return nil, nil, fmt.Errorf("%s needs a value", name)
			}
			val, args = args[1], args[1:]
		}
		args = args[1:]
		switch name {
		case "--tor-socks":
			if val == "" {
				return nil, nil, errors.New("--tor-socks needs an address (e.g. 127.0.0.1:9050)")
			}
			t.torSocks = val
		case "--timeout":
			d, err := parseTimeout(val)
			if err != nil {
				return nil, nil, fmt.Errorf("--timeout: %v", err)
			}
			t.timeout = d
		case "--tor-retry":
			d, err := parseRetry(val)
			if err != nil {
				return nil, nil, fmt.Errorf("--tor-retry: %v", err)
			}
			t.torRetry = d
		case "--pin":
			p, err := pintls.ParsePin(val)
			if err != nil {
				return nil, nil, fmt.Errorf("--pin: %v", err)
			}
			t.pin = p
		}
	}
	return t, args, nil
}

func parseRetry(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, aerr := strconv.Atoi(v); aerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < 0 || d > time.Hour {
		return 0, fmt.Errorf("%q: want a duration from 0 to 1h (60s, 2m; 0 turns retrying off)", v)
	}
	return d, nil
}

// newClient returns a client for server (HOST[:PORT][#PIN]), through Tor
// when --tor-socks is set, over TLS with the server's pinned certificate
// when a pin is given (SERVER#sha256:..., or --pin). Without a pin it
// speaks cleartext only where that is safe: to an onion address (Tor
// authenticates and encrypts it end to end) or over loopback (the
// relay's own machine); anywhere else only with --insecure-cleartext.
// A refusal comes back from the client's first request, before anything
// is sent (see transportFail).
func (c *cli) newClient(server string) *client.Client {
	addr, pin, perr := pintls.SplitAddr(server)
	cl := client.New(serverAddr(addr))
	t := c.transport
	if t == nil {
		t = &transport{}
	}
	if t.torSocks != "" {
		// Fresh SOCKS credentials per run: tor gives this run circuits of
		// its own (IsolateSOCKSAuth).
		d := &socks.Dialer{Proxy: t.torSocks, Username: "bento-cli-" + strconv.Itoa(os.Getpid()), Password: "bento", RetryFor: t.torRetry}
		d.OnRetry = func(err *socks.Error, _ int, _ time.Duration) {
			t.retryNote.Do(func() {
				fmt.Fprintf(c.stderr, "bento: %s is not reachable yet: %s; a new onion service takes a minute or two to be published, so bento tries again for up to %s (--tor-retry)\n",
					clean(err.Target), clean(err.Reason()), t.torRetry)
			})
		}
		cl.Dialer = d
		// The retries come out of the request's time.
		cl.Timeout = t.torTimeout()
	}
	refuse := func(code int, format string, a ...any) *client.Client {
		cl.Dialer = refusal{&transportError{code, fmt.Sprintf(format, a...)}}
		return cl
	}
	if perr != nil {
		return refuse(exitUsage, "%s: %v", clean(server), perr)
	}
	host, _, err := net.SplitHostPort(cl.Addr)
	if err != nil {
		return cl // the dial says what is wrong with the address
	}
	switch {
	case socks.IsOnion(host):
		// A pin given with the command's own server is a mistake; --pin
		// and $BENTO_PIN are for the servers reached directly.
		if pin != "" {
			return refuse(exitUsage, "%s is an onion address: Tor authenticates and encrypts the connection end to end, and bentod speaks no TLS there; give it without #sha256:…", clean(addr))
		}
	case pin != "" || t.pin != "":
		cl.Pin = cmp.Or(pin, t.pin)
	case loopbackIP(host):
	case t.insecure:
		t.cleartextNote.Do(func() {
			fmt.Fprintf(c.stderr, "bento: warning: talking to %s in cleartext (--insecure-cleartext): anyone on the path can read and change what is sent, tokens included\n", clean(cl.Addr))
		})
	case t.torSocks == "" && net.ParseIP(host) == nil:
		// A name: cleartext if it stands for this machine only.
		cl.Dialer = &loopbackOnly{refused: cleartextRefused(cl.Addr, false)}
	default:
		cl.Dialer = refusal{cleartextRefused(cl.Addr, t.torSocks != "")}
	}
	return cl
}

// loopbackIP reports whether host is an IP address of this machine's
// loopback (127.0.0.0/8, ::1).
func loopbackIP(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// cleartextRefused is the refusal of cleartext to addr, beyond loopback.
func cleartextRefused(addr string, tor bool) *transportError {
	via := ""
	if tor {
		via = " (through Tor, an address that is not an onion address leaves Tor at an exit relay, which sees it all)"
	}
	return &transportError{exitUsage, fmt.Sprintf("%s is not on this machine, and bento does not talk to it in cleartext without a pin: anyone on the path could read and change what is sent, tokens included%s; "+
		"give its certificate pin, %s#sha256:… or bento --pin sha256:… COMMAND (bentod logs it at start and writes it to DataDirectory/tls_fingerprint; ask its operator), "+
		"or go on in cleartext with bento --insecure-cleartext COMMAND", clean(addr), via, clean(addr))}
}

// transportError is a server bento will not talk to as asked; code is
// the exit status.
type transportError struct {
	code int
	msg  string
}

func (e *transportError) Error() string { return e.msg }

// refusal is a Dialer that refuses, before any connection.
type refusal struct{ err error }

func (r refusal) DialContext(context.Context, string, string) (net.Conn, error) { return nil, r.err }

// loopbackOnly dials a host name in cleartext only if every address it
// stands for is a loopback address, and dials the addresses it checked
// (not the name again, which could stand for another by then).
type loopbackOnly struct{ refused error }

func (d *loopbackOnly) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return nil, d.refused
		}
	}
	err = fmt.Errorf("%s has no address", host)
	for _, ip := range ips {
		var nd net.Dialer
		var nc net.Conn
		if nc, err = nd.DialContext(ctx, network, net.JoinHostPort(ip.IP.String(), port)); err == nil {
			return nc, nil
		}
	}
	return nil, err
}

// transportFail reports a refusal of newClient, or a server whose
// certificate is not the one pinned; ok is false for any other error.
func (c *cli) transportFail(err error) (code int, ok bool) {
	var te *transportError
	var pm *client.PinMismatch
	switch {
	case errors.As(err, &te):
		return c.errorf(te.code, nil, "%s", te.msg), true
	case errors.As(err, &pm):
		return c.errorf(exitConnect, nil, "%s is not the server pinned: its certificate is %s, the pin %s. Someone between you and it may be intercepting the connection (nothing was sent), or the server made a new key (its DataDirectory was lost or its tls_cert.pem replaced): "+
			"get its current pin from its operator over a channel you trust (bentod logs it at start and writes it to DataDirectory/tls_fingerprint) before using it", clean(pm.Addr), pm.Got, pm.Want), true
	}
	return 0, false
}

// serverArg is how to name cl's server on bento's command line again.
func serverArg(cl *client.Client) string {
	if cl.Pin != "" {
		return cl.Addr + "#" + cl.Pin
	}
	return cl.Addr
}
