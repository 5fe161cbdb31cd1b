package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

const authorPolicy = "AllowAPI send,recv,log,time,sleep,random,storage,exit\n"

// authorFn writes a service function whose main.star is code.
func authorFn(t *testing.T, code string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fn")
	os.MkdirAll(dir, 0o755)
	man := "name = \"notes\"\nmode = \"service\"\napis = [\"log\", \"storage\"]\n[resources]\nlifetime = \"5 minutes\"\n"
	if err := os.WriteFile(filepath.Join(dir, "bento.toml"), []byte(man), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.star"), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

const notesV1 = `
def main(op, arg = ""):
    if op == "put":
        storage.put("k", arg)
        bento.log("put " + arg)
        return "stored"
    if op == "log":
        bento.log(arg)
        return "logged"
    if op == "get":
        return storage.get("k")
    return "v1"
`

const notesV2 = `
def main(op, arg = ""):
    if op == "get":
        return storage.get("k")
    if op == "log":
        bento.log(arg)
        return "logged"
    return "v2"
`

// bentoIn runs the CLI with its local store in state (XDG_STATE_HOME),
// or with none when state is "".
func bentoIn(t *testing.T, state string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(testutil.Binaries(t), "bento"), args...)
	cmd.Env = storeEnv(state)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

func storeEnv(state string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BENTO_NO_STORE=") && !strings.HasPrefix(kv, "XDG_STATE_HOME=") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env, "XDG_STATE_HOME="+state, "HOME="+state)
}

// TestAuthorLoop: the author's loop with the real binaries: a function's
// log read with either token (and followed), the local store of
// instances (ls, forget, @ID, --no-store), and an update in place that
// keeps the tokens and the stored data, survives a refused update and a
// restart of bentod.
//
// It times nothing, on a bentod of its own: it runs in the parallel
// phase, after the sequential tests.
func TestAuthorLoop(t *testing.T) {
	t.Parallel()
	d := startBentod(t, authorPolicy)
	state := t.TempDir()
	must := func(r result, what string) result {
		t.Helper()
		if r.Code != 0 {
			t.Fatalf("%s: %s", what, r)
		}
		return r
	}
	v1 := authorFn(t, notesV1)
	var dep struct {
		Instance, Inv, Sd string
	}
	r := must(bentoIn(t, state, "deploy", d.Addr, v1), "deploy")
	var raw map[string]string
	if err := json.Unmarshal([]byte(r.Stdout), &raw); err != nil {
		t.Fatalf("deploy output %q: %v", r.Stdout, err)
	}
	dep.Instance, dep.Inv, dep.Sd = raw["instance"], raw["invocation_token"], raw["shutdown_token"]

	// The store: 0600 in a 0700 directory, listed by ls.
	storeFile := filepath.Join(state, "bento", "instances.json")
	if st, err := os.Stat(storeFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("store file: %v %v", err, st)
	}
	if st, err := os.Stat(filepath.Dir(storeFile)); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("store directory: %v %v", err, st)
	}
	if r := must(bentoIn(t, state, "ls"), "ls"); !strings.Contains(r.Stdout, dep.Instance) || !strings.Contains(r.Stdout, "notes") || strings.Contains(r.Stdout, dep.Sd) {
		t.Fatalf("ls: %s", r)
	}
	// --no-store and $BENTO_NO_STORE leave nothing on disk.
	bare := t.TempDir()
	other := must(bentoIn(t, bare, "deploy", "--no-store", d.Addr, v1), "deploy --no-store")
	if ents, _ := os.ReadDir(bare); len(ents) != 0 {
		t.Fatalf("deploy --no-store wrote %v", ents)
	}
	var otherDep map[string]string
	json.Unmarshal([]byte(other.Stdout), &otherDep)
	must(bentoIn(t, bare, "shutdown", "--no-store", d.Addr, otherDep["shutdown_token"]), "shutdown --no-store")
	if ents, _ := os.ReadDir(bare); len(ents) != 0 {
		t.Fatalf("shutdown --no-store wrote %v", ents)
	}

	// Logs: with either token (and @ID), from the start.
	must(bentoIn(t, state, "invoke", d.Addr, "@"+dep.Instance, "put", "hello"), "invoke put")
	for _, tok := range []string{dep.Inv, dep.Sd, "@" + dep.Instance} {
		if r := must(bentoIn(t, state, "logs", d.Addr, tok), "logs"); !strings.Contains(r.Stdout, " put hello\n") {
			t.Fatalf("logs with %.12s: %s", tok, r)
		}
	}
	// --follow sees a new line.
	fctx, fcancel := context.WithCancel(context.Background())
	defer fcancel()
	follow := exec.CommandContext(fctx, filepath.Join(testutil.Binaries(t), "bento"), "logs", "--follow", d.Addr, dep.Inv)
	follow.Env = storeEnv(state)
	var fout, ferr syncBuffer
	follow.Stdout, follow.Stderr = &fout, &ferr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor := func(b *syncBuffer, s string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(b.String(), s); {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in %q (stderr %q)", s, b.String(), ferr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(&fout, "put hello")
	must(bentoIn(t, state, "invoke", d.Addr, dep.Inv, "log", "a new line"), "invoke log")
	waitFor(&fout, " a new line\n")
	follow.Process.Signal(os.Interrupt)
	if err := follow.Wait(); err != nil {
		t.Fatalf("logs --follow after Ctrl-C: %v (stderr %q)", err, ferr.String())
	}

	// Update: the new code answers, with the same tokens and the data.
	v2 := authorFn(t, notesV2)
	must(bentoIn(t, state, "update", d.Addr, dep.Sd, v2), "update")
	check := func(when string) {
		t.Helper()
		if r := bentoIn(t, state, "invoke", d.Addr, dep.Inv, "version"); r.Code != 0 || r.Stdout != "v2" {
			t.Fatalf("%s: version: %s", when, r)
		}
		if r := bentoIn(t, state, "invoke", d.Addr, dep.Inv, "get"); r.Code != 0 || r.Stdout != "hello" {
			t.Fatalf("%s: the stored data: %s", when, r)
		}
	}
	check("after the update")
	// The invocation token cannot update; a refused update leaves v2.
	if r := bentoIn(t, state, "update", d.Addr, dep.Inv, v2); r.Code != 2 {
		t.Fatalf("update with the invocation token: %s", r)
	}
	bad := authorFn(t, "x = {}[\"nope\"]\ndef main(op, arg = \"\"):\n    return \"bad\"\n")
	if r := bentoIn(t, state, "update", d.Addr, dep.Sd, bad); r.Code != 8 || !strings.Contains(r.Stderr, "keeps its old code") {
		t.Fatalf("update with code that fails to load: %s", r)
	}
	check("after a refused update")
	// A restart of bentod restores the new code.
	d.stop(t)
	d.restart(t)
	check("after bentod restarted")

	// forget drops an entry; shutdown drops its own.
	must(bentoIn(t, state, "forget", dep.Instance), "forget")
	if r := must(bentoIn(t, state, "ls", "--json"), "ls --json"); strings.Contains(r.Stdout, dep.Instance) {
		t.Fatalf("ls after forget: %s", r)
	}
	if r := bentoIn(t, state, "forget", dep.Instance); r.Code != 5 {
		t.Fatalf("forget again: %s", r)
	}
	third := must(bentoIn(t, state, "deploy", d.Addr, v1), "deploy")
	var thirdDep map[string]string
	json.Unmarshal([]byte(third.Stdout), &thirdDep)
	must(bentoIn(t, state, "shutdown", d.Addr, "@"+thirdDep["instance"]), "shutdown @ID")
	if r := must(bentoIn(t, state, "ls", "--json"), "ls --json"); strings.TrimSpace(r.Stdout) != "[]" {
		t.Fatalf("ls after shutdown: %s", r)
	}
	must(bentoIn(t, state, "shutdown", d.Addr, dep.Sd), "shutdown")
}
