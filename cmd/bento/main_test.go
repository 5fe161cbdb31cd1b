package main

import (
	"bytes"
	"context"

	"github.com/torbento/bento/client"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHelpExitsZero: asking for help, of bento or of any command, is not
// a mistake: exit 0, and the usage says what the command takes; a
// mistake is still exit 2.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"policy", "--help"}, {"deploy", "--help"}, {"invoke", "--help"}, {"attach", "--help"},
		{"shutdown", "--help"}, {"run", "--help"}, {"run", "-h"}, {"boxes", "--help"},
		{"dust", "--help"}, {"dust", "up", "--help"}, {"dust", "ls", "--help"}, {"dust", "down", "--help"}, {"dust", "render", "--help"},
		{"--tor-socks", "127.0.0.1:9", "deploy", "-h"},
		{"logs", "--help"}, {"update", "--help"}, {"ls", "--help"}, {"forget", "--help"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errb); code != exitOK {
			t.Errorf("bento %s: exit %d, want 0\n%s", strings.Join(args, " "), code, errb.String())
		}
		if out.Len()+errb.Len() == 0 {
			t.Errorf("bento %s: printed no usage", strings.Join(args, " "))
		}
	}
	for _, args := range [][]string{{}, {"deploy"}, {"shutdown", "a"}, {"run", "--no-such-flag"}, {"nonsense"}, {"logs", "a"}, {"update", "a", "bento-sd-x"}, {"forget"}, {"ls", "x"}} {
		var out, errb bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errb); code != exitUsage {
			t.Errorf("bento %s: exit %d, want %d (usage)", strings.Join(args, " "), code, exitUsage)
		}
	}
}

// TestVersion: bento --version names the release and the wire protocol.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"--version", "-version", "version"} {
		var out, errb bytes.Buffer
		if code := run([]string{arg}, strings.NewReader(""), &out, &errb); code != exitOK || !strings.HasPrefix(out.String(), "bento 0.") || !strings.Contains(out.String(), "protocol 1") {
			t.Errorf("bento %s: exit %d, %q", arg, code, out.String())
		}
	}
}

// TestUsageErrorsAreShort: a mistake gets one line that says what was
// wrong and where to read more, not the whole usage (which buried it);
// a misspelt command gets the one meant; --timeout wants a unit.
func TestUsageErrorsAreShort(t *testing.T) {
	// commands (for "did you mean") are the usage's commands.
	if got, want := strings.Join(commands, " "), strings.Join(completionSpec().commands, " "); got != want {
		sortedGot, sortedWant := strings.Fields(got), strings.Fields(want)
		slices.Sort(sortedGot)
		slices.Sort(sortedWant)
		if !slices.Equal(sortedGot, sortedWant) {
			t.Errorf("commands %v; the usage lists %v", sortedGot, sortedWant)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "bento: run takes [-i] [--destinations ITEMS] SERVER DIR [ARG...], or --choose DIR [ARG...]\n(bento run --help says more; bento --help lists the commands)\n"},
		{[]string{"deplyo", "x"}, "bento: unknown command \"deplyo\"; did you mean deploy? (bento --help lists the commands)\n"},
		{[]string{"frobnicate"}, "bento: unknown command \"frobnicate\" (bento --help lists the commands)\n"},
		{[]string{"--timeout", "5", "run", "a", "b"}, "bento: --timeout: \"5\" has no unit: give one, e.g. 5s or 5m\n(bento --help lists the commands and the global options)\n"},
		{[]string{"--timeout", "forever", "ls"}, "bento: --timeout: \"forever\" is not a duration (e.g. 30s, 2m, 1h)\n(bento --help lists the commands and the global options)\n"},
		{[]string{"--timeout", "0s", "ls"}, "bento: --timeout: \"0s\": want a duration from 1ms to 24h\n(bento --help lists the commands and the global options)\n"},
	} {
		var out, errb bytes.Buffer
		if code := run(c.args, strings.NewReader(""), &out, &errb); code != exitUsage || errb.String() != c.want {
			t.Errorf("bento %s: exit %d, stderr\n%s\nwant exit %d, stderr\n%s", strings.Join(c.args, " "), code, errb.String(), exitUsage, c.want)
		}
	}
	var errb bytes.Buffer
	if code := run([]string{"run", "--timeout", "5", "127.0.0.1:1", "dir"}, strings.NewReader(""), io.Discard, &errb); code != exitUsage || !strings.Contains(errb.String(), `"5" has no unit: give one, e.g. 5s or 5m`) {
		t.Errorf("run --timeout 5: exit %d, %s", code, errb.String())
	}
}

// TestGlobalTimeout: --timeout before the command is every request's,
// and the command's own --timeout wins over it.
func TestGlobalTimeout(t *testing.T) {
	tr, rest, err := parseTransport([]string{"--timeout", "90s", "ls"})
	if err != nil || tr.timeout != 90*time.Second || len(rest) != 1 {
		t.Fatalf("parseTransport: %v, %v, %v", tr, rest, err)
	}
	c := &cli{timeout: tr.timeout}
	fs := c.newFlags("x", "")
	c.addTimeout(fs)
	if err := fs.Parse(nil); err != nil || c.timeout != 90*time.Second {
		t.Fatalf("without the command's own: %v, %v", c.timeout, err)
	}
	if err := fs.Parse([]string{"--timeout", "2m"}); err != nil || c.timeout != 2*time.Minute {
		t.Fatalf("with the command's own: %v, %v", c.timeout, err)
	}
}

// TestTimeoutHintSaysTheWait: "no answer in …" names what the request
// waited: through Tor at least --tor-retry and 30 s more, which may be
// longer than --timeout (it said --timeout's 1m0s after a wait of 2m0s).
func TestTimeoutHintSaysTheWait(t *testing.T) {
	for _, c := range []struct {
		socks string
		want  string
	}{
		{"", "no answer in 1m0s;"},
		{"127.0.0.1:9", "no answer in 2m0s;"},
	} {
		var errb bytes.Buffer
		cl := &cli{ctx: context.Background(), stderr: &errb, timeout: time.Minute, transport: &transport{torSocks: c.socks, torRetry: 90 * time.Second}}
		cl.client("127.0.0.1:1")
		if code := cl.fail(&client.ConnError{Err: context.DeadlineExceeded}, ""); code != exitConnect || !strings.Contains(errb.String(), c.want) {
			t.Errorf("through %q: exit %d, %q; want %q", c.socks, code, errb.String(), c.want)
		}
	}
}
