package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
)

// withStateDir points the store at a new directory for the test.
func withStateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_STATE_HOME", dir)
	t.Setenv("BENTO_NO_STORE", "")
	return filepath.Join(dir, "bento", "instances.json")
}

func testCLI() (*cli, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &cli{stdout: &out, stderr: &errb, stdin: strings.NewReader("")}, &out, &errb
}

func TestStoreRememberLsForget(t *testing.T) {
	path := withStateDir(t)
	c, _, errb := testCLI()
	fn := &client.Function{Manifest: []byte("name = \"hello\"\n")}
	res, _ := json.Marshal(map[string]any{"lifetime_ns": time.Hour})
	for _, id := range []string{"i-1", "i-2"} {
		c.remember(false, entryFor("127.0.0.1:8888", fn, &client.Deployed{Instance: id, InvocationToken: "bento-inv-" + id, ShutdownToken: "bento-sd-" + id, Resources: res}))
	}
	// One that has ended.
	c.remember(false, storeEntry{Server: "127.0.0.1:8888", Instance: "i-old", Function: "old", InvocationToken: "bento-inv-o", ShutdownToken: "bento-sd-o", DeployedAt: time.Now().Add(-2 * time.Hour), EndsAt: time.Now().Add(-time.Hour)})
	if errb.Len() > 0 {
		t.Fatalf("remember: %s", errb)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v, mode %v, want %v", p, err, st.Mode().Perm(), want)
		}
	}
	var out, stderr bytes.Buffer
	if code := run([]string{"ls"}, strings.NewReader(""), &out, &stderr); code != 0 {
		t.Fatalf("ls: exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.Contains(lines[1], "i-1") || !strings.Contains(lines[1], "hello") || !strings.Contains(lines[3], "(ended)") || strings.Contains(lines[1], "(ended)") {
		t.Fatalf("ls:\n%s", out.String())
	}
	if strings.Contains(out.String(), "bento-sd-") {
		t.Fatalf("ls prints tokens:\n%s", out.String())
	}
	out.Reset()
	if code := run([]string{"ls", "--json"}, strings.NewReader(""), &out, &stderr); code != 0 {
		t.Fatalf("ls --json: exit %d: %s", code, stderr.String())
	}
	var rows []struct {
		Instance      string `json:"instance"`
		ShutdownToken string `json:"shutdown_token"`
		Ended         bool   `json:"ended"`
	}
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 3 || rows[0].ShutdownToken != "bento-sd-i-1" || rows[0].Ended || !rows[2].Ended {
		t.Fatalf("ls --json: %v\n%s", err, out.String())
	}
	// @ID stands for the token.
	if tok, code := c.resolveToken("127.0.0.1", "@i-2", true); code >= 0 || tok != "bento-sd-i-2" {
		t.Fatalf("@i-2: %q %d", tok, code)
	}
	if tok, code := c.resolveToken("127.0.0.1:8888", "@i-2", false); code >= 0 || tok != "bento-inv-i-2" {
		t.Fatalf("@i-2: %q %d", tok, code)
	}
	if _, code := c.resolveToken("127.0.0.1:9999", "@i-2", false); code != exitNotFound {
		t.Fatalf("@i-2 of another server: exit %d", code)
	}
	// shutdown's success forgets by token; forget by id.
	c.forgetToken(false, "127.0.0.1:8888", "bento-sd-i-1")
	if code := run([]string{"forget", "i-old"}, strings.NewReader(""), &out, &stderr); code != 0 {
		t.Fatalf("forget: %d %s", code, stderr.String())
	}
	if code := run([]string{"forget", "i-old"}, strings.NewReader(""), &out, &stderr); code != exitNotFound {
		t.Fatalf("forget again: %d", code)
	}
	s, _ := openStore()
	es, err := s.read()
	s.close()
	if err != nil || len(es) != 1 || es[0].Instance != "i-2" {
		t.Fatalf("left: %+v %v", es, err)
	}
}

func TestNoStore(t *testing.T) {
	for _, tc := range []struct {
		env  string
		flag bool
	}{{"1", false}, {"yes", false}, {"", true}} {
		path := withStateDir(t)
		t.Setenv("BENTO_NO_STORE", tc.env)
		c, _, errb := testCLI()
		c.remember(tc.flag, storeEntry{Server: "s:1", Instance: "i-1", InvocationToken: "a", ShutdownToken: "b"})
		c.forgetToken(tc.flag, "s:1", "b")
		if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) || errb.Len() > 0 {
			t.Fatalf("BENTO_NO_STORE=%q --no-store=%v: the store's directory exists (%v) %s", tc.env, tc.flag, err, errb)
		}
	}
}

func TestParseStore(t *testing.T) {
	good := `{"version":1,"instances":[{"server":"a:1","instance":"i-1","invocation_token":"x","shutdown_token":"y"}]}`
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{good, true},
		{`{"version":1,"instances":[]}`, true},
		{`{"version":2,"instances":[]}`, false},
		{`{"version":1,"instances":[{"server":"a:1","instance":"i-1"}]}`, false},
		{`not json`, false},
		{``, false},
	} {
		if _, err := parseStore([]byte(tc.in)); (err == nil) != tc.ok {
			t.Errorf("parseStore(%q): %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

// FuzzParseStore: a damaged or hostile store file is refused or read,
// never a panic, and what is read has every entry's server, id and tokens.
func FuzzParseStore(f *testing.F) {
	f.Add([]byte(`{"version":1,"instances":[{"server":"a:1","instance":"i-1","invocation_token":"x","shutdown_token":"y","ends_at":"2030-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := parseStore(b)
		if err != nil {
			return
		}
		for _, e := range es {
			if e.Server == "" || e.Instance == "" || e.InvocationToken == "" || e.ShutdownToken == "" {
				t.Fatalf("an entry without its server, id or tokens: %+v", e)
			}
		}
	})
}
