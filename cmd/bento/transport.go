package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/socks"
)

// transport is how bento reaches servers: the global options before the
// command.
type transport struct {
	torSocks  string        // --tor-socks, $BENTO_TOR_SOCKS: through this tor SocksPort
	torRetry  time.Duration // --tor-retry, $BENTO_TOR_RETRY: while an onion service's descriptor spreads
	retryNote sync.Once     // the retry is said once a run
}

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
	for len(args) > 0 {
		name, val, hasVal := strings.Cut(args[0], "=")
		switch name {
		case "--tor-socks", "--tor-retry":
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
		case "--tor-retry":
			d, err := parseRetry(val)
			if err != nil {
				return nil, nil, fmt.Errorf("--tor-retry: %v", err)
			}
			t.torRetry = d
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

// newClient returns a client for addr, through Tor when --tor-socks is set.
func (c *cli) newClient(addr string) *client.Client {
	cl := client.New(addr)
	if t := c.transport; t.torSocks != "" {
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
		cl.Timeout = max(60*time.Second, t.torRetry+30*time.Second)
	}
	return cl
}
