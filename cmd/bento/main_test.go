package main

import (
	"bytes"
	"strings"
	"testing"
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
