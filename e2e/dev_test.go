package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

// nobody is the user bento dev runs as here: not root, in no group.
const nobody = 65534

// TestDev runs bento dev as an unprivileged user (setpriv: uid and gid
// 65534, no groups), with no server, on shipped functions, and compares
// what it prints with what bento run and bento invoke print for the same
// function and arguments against a real bentod: the same bytes.
func TestDev(t *testing.T) {
	d := startBentod(t, "")
	_, err := exec.LookPath("setpriv")
	testutil.Require(t, err == nil, "setpriv in PATH (util-linux)")

	// What nobody may use: a copy of bento, copies of the functions, and
	// a home of its own, under directories nobody may search.
	dir := testutil.TempDir(t)
	bin := filepath.Join(dir, "bento")
	copyFile(t, filepath.Join(testutil.Binaries(t), "bento"), bin, 0o755)
	fns := filepath.Join(dir, "functions")
	for _, name := range []string{"hello", "dropbox"} {
		os.MkdirAll(filepath.Join(fns, name), 0o755)
		ents, err := os.ReadDir(fn(name))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			copyFile(t, filepath.Join(fn(name), e.Name()), filepath.Join(fns, name, e.Name()), 0o644)
		}
	}
	os.Chmod(fns, 0o755)
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	dev := func(stdin string, args ...string) result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		argv := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--", bin, "dev"}, args...)
		cmd := exec.CommandContext(ctx, "setpriv", argv...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + home, "TMPDIR=" + home, "BENTO_NO_STORE=1"}
		cmd.Dir = home
		var out, errb bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("bento dev %s: %v", strings.Join(args, " "), err)
		}
		return result{out.String(), errb.String(), code}
	}
	// setpriv drops root as the test means it to.
	if out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "id", "-u").Output(); err != nil || strings.TrimSpace(string(out)) != "65534" {
		t.Fatalf("setpriv id -u: %q, %v", out, err)
	}
	same := func(what string, dev, srv result) {
		t.Helper()
		if dev.Code != srv.Code || dev.Stdout != srv.Stdout {
			t.Errorf("%s: bento dev and the server differ\ndev: %s\nserver: %s", what, dev, srv)
		}
	}

	// hello, with and without an argument.
	same("hello Alice", dev("", filepath.Join(fns, "hello"), "Alice"), bento(t, "", "run", d.Addr, fn("hello"), "Alice"))
	same("hello", dev("", filepath.Join(fns, "hello")), bento(t, "", "run", d.Addr, fn("hello")))

	// dropbox: put, then get in a second run, with the storage kept in
	// nobody's directory; on the server, one instance invoked twice.
	store := filepath.Join(home, "dropbox-store")
	devPut := dev("the data\n", "-i", "--storage", store, filepath.Join(fns, "dropbox"), "put")
	devGet := dev("", filepath.Join(fns, "dropbox"), "get", "--storage", store)
	dep := deployCLI(t, d, fn("dropbox"))
	srvPut := bento(t, "the data\n", "invoke", "-i", d.Addr, dep.InvocationToken, "put")
	srvGet := bento(t, "", "invoke", d.Addr, dep.InvocationToken, "get")
	bento(t, "", "shutdown", d.Addr, dep.ShutdownToken)
	same("dropbox put", devPut, srvPut)
	same("dropbox get", devGet, srvGet)
	if devGet.Stdout != "the data\n" {
		t.Errorf("dropbox get: %s", devGet)
	}
	// The store is nobody's: bento dev itself ran as nobody.
	st, err := os.Stat(filepath.Join(store, "storage.log"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid != nobody {
		t.Errorf("the store belongs to uid %d, not %d", uid, nobody)
	}

	// An error of the function: the same message and backtrace.
	devErr := dev("", filepath.Join(fns, "dropbox"), "get")
	srvErr := bento(t, "", "run", d.Addr, fn("dropbox"), "get")
	same("dropbox get, empty", devErr, srvErr)
	if devErr.Code != 1 || !strings.HasPrefix(devErr.Stderr, "bento: function error: main.star:") {
		t.Errorf("dropbox get, empty: %s", devErr)
	}
	if i := strings.Index(srvErr.Stderr, "bento: function error:"); i < 0 || srvErr.Stderr[i:] != devErr.Stderr {
		t.Errorf("dropbox get, empty: the error differs\ndev: %s\nserver: %s", devErr.Stderr, srvErr.Stderr)
	}
	// Nothing left in nobody's home but the store it was asked to keep.
	if ents, _ := os.ReadDir(home); len(ents) != 1 {
		t.Errorf("bento dev left %d entries in its TMPDIR", len(ents))
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
