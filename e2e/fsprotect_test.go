package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/policy"
)

// protectedDropbox is the shipped Dropbox with protect = true.
func protectedDropbox(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	m, err := os.ReadFile(filepath.Join(fn("dropbox"), "bento.toml"))
	if err != nil {
		t.Fatal(err)
	}
	code, err := os.ReadFile(filepath.Join(fn("dropbox"), "main.star"))
	if err != nil {
		t.Fatal(err)
	}
	m = bytes.Replace(m, []byte("\n[resources]"), []byte("\nprotect = true\n\n[resources]"), 1)
	if !bytes.Contains(m, []byte("protect = true")) {
		t.Fatal("the dropbox manifest has no [resources] to put protect before")
	}
	os.WriteFile(filepath.Join(dir, "bento.toml"), m, 0o644)
	os.WriteFile(filepath.Join(dir, "main.star"), code, 0o644)
	return dir
}

// diskFiles lists the files under dir that hold b (the containers'
// shared root filesystem, bento-runner alone, aside).
func diskFiles(t *testing.T, dir string, b []byte) []string {
	t.Helper()
	var found []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() && p == filepath.Join(dir, "rootfs") {
			return filepath.SkipDir
		}
		if err == nil && fi.Mode().IsRegular() {
			if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, b) {
				found = append(found, p)
			}
		}
		return nil
	})
	return found
}

// TestFSProtect runs a protected Dropbox on a real bentod: what it
// stores is nowhere on the operator's disk in the clear while it reads
// back fine, after its runner was killed too; a changed record is an error the function sees; after a
// restart of bentod the data is gone and the client is told why, while an
// unprotected Dropbox beside it comes back with its data. About 3-4 s
// (a restart of bentod is 1.5 of them), the binaries built once aside.
func TestFSProtect(t *testing.T) {
	d := startBentod(t, "AllowFSProtect 1\n")
	cl := client.New(d.Addr)
	pub, err := cl.Policy(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if pub.FSProtect != policy.KeyHolderMemory {
		t.Fatalf("the public policy's fs_protect is %q, want %q", pub.FSProtect, policy.KeyHolderMemory)
	}
	if r := bento(t, "", "policy", d.Addr); r.Code != 0 || !strings.Contains(r.Stdout, "fs protect   keys held in bentod's memory, nothing attested") {
		t.Fatalf("bento policy does not show FS Protect: %s", r)
	}
	const secret, plainSecret = "FS-PROTECT-E2E-SECRET the quick brown fox", "UNPROTECTED-E2E-DATA jumps over"
	deploy := func(dir string) *client.Deployed {
		f, err := client.LoadFunction(dir)
		if err != nil {
			t.Fatal(err)
		}
		dep, err := cl.Deploy(ctx(t), f)
		if err != nil {
			t.Fatalf("deploy %s: %v", dir, err)
		}
		return dep
	}
	prot, plain := deploy(protectedDropbox(t)), deploy(fn("dropbox"))
	for _, c := range []struct {
		dep  *client.Deployed
		data string
	}{{prot, secret}, {plain, plainSecret}} {
		if _, err := cl.CallWithInput(ctx(t), c.dep.InvocationToken, []byte(c.data), "put"); err != nil {
			t.Fatalf("put: %v", err)
		}
		if out, err := cl.Call(ctx(t), c.dep.InvocationToken, "get"); err != nil || string(out) != c.data {
			t.Fatalf("get: %q %v", out, err)
		}
	}
	// Reattaching to the protected get's sealed session, from its start
	// and from the record boundary after its data, as after a dropped
	// connection.
	sess, err := cl.Invoke(ctx(t), prot.InvocationToken, "get")
	if err != nil {
		t.Fatal(err)
	}
	if data, exit, err := sess.Recv(); err != nil || exit != nil || string(data) != secret {
		t.Fatalf("the get's first record: %q %v %v", data, exit, err)
	}
	mid := sess.Offset
	sess.Close()
	for _, c := range []struct {
		off  int64
		want string
	}{{0, secret}, {mid, ""}} {
		a, err := cl.Attach(ctx(t), prot.InvocationToken, sess.ID, c.off)
		if err != nil {
			t.Fatalf("attach at %d: %v", c.off, err)
		}
		out, exit, err := a.Collect()
		a.Close()
		if err != nil || exit == nil || string(out) != c.want {
			t.Fatalf("attach at %d: %q %+v %v", c.off, out, exit, err)
		}
	}
	if _, err := cl.Attach(ctx(t), prot.InvocationToken, sess.ID, mid-1); err == nil || !strings.Contains(err.Error(), "not a record boundary") {
		t.Fatalf("attach inside a sealed record: %v", err)
	}

	// The stored value, and the get's output in the session log: in the
	// clear for the unprotected one (the scan finds what is there), not
	// for the protected one.
	if found := diskFiles(t, d.DataDir, []byte(plainSecret)); len(found) < 2 {
		t.Errorf("the unprotected data is in %v: want its storage and its session log (the scan is blind)", found)
	}
	if found := diskFiles(t, d.DataDir, []byte(secret)); len(found) > 0 {
		t.Errorf("the protected data is in the clear in %v", found)
	}
	for _, part := range []string{secret[:12], secret[len(secret)-12:]} {
		if found := diskFiles(t, d.DataDir, []byte(part)); len(found) > 0 {
			t.Errorf("%q is in the clear in %v", part, found)
		}
	}
	protDir := filepath.Join(d.DataDir, "instances", prot.Instance)
	if st, err := os.Stat(filepath.Join(protDir, "storage.log")); err != nil || st.Size() < int64(len(secret)) {
		t.Fatalf("the protected storage file: %v %v (the test looks at the wrong place)", st, err)
	}

	// An update cannot take the protection away (nor give it).
	unprot, err := client.LoadFunction(fn("dropbox"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Update(ctx(t), prot.ShutdownToken, unprot); !client.IsCode(err, client.CodeRefused) || !strings.Contains(err.Error(), "changes FS Protect, which an update cannot") {
		t.Fatalf("an update dropping protect = true: %v", err)
	}

	// The runner dies (as by a limit): the key is bentod's, not the
	// runner's, so the next runner reads the data back.
	pidData, err := os.ReadFile(filepath.Join(d.DataDir, "bundles", prot.Instance, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidData)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// A call that reaches the dying runner ends with it; the next one
	// waits for the new runner.
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, err := cl.Call(ctx(t), prot.InvocationToken, "get")
		if err == nil && string(out) == secret {
			break
		}
		if time.Now().After(deadline) || err != nil && !strings.Contains(err.Error(), "runner ended unexpectedly") {
			t.Fatalf("get after the runner was killed: %q %v", out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A record changed on disk: the function's get fails, it never reads
	// other bytes.
	f, err := os.OpenFile(filepath.Join(protDir, "storage.log"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	b := make([]byte, 1)
	f.ReadAt(b, st.Size()-1)
	b[0] ^= 0x40
	f.WriteAt(b, st.Size()-1)
	f.Close()
	if out, err := cl.Call(ctx(t), prot.InvocationToken, "get"); err == nil || !strings.Contains(err.Error(), "FS Protect: stored data failed its integrity check") {
		t.Fatalf("get after a record was changed: %q %v", out, err)
	}
	b[0] ^= 0x40 // put back: what the restart finds is the instance's own
	if f, err := os.OpenFile(filepath.Join(protDir, "storage.log"), os.O_RDWR, 0); err == nil {
		f.WriteAt(b, st.Size()-1)
		f.Close()
	}

	d.stop(t)
	if exists(filepath.Join(protDir, "storage.log")) {
		t.Error("the protected storage stays on disk after bentod stopped")
	}
	if !strings.Contains(d.log.String(), "it has FS Protect, so its data goes with this bentod and it will not be restored") {
		t.Errorf("bentod's log does not say the protected instance will not come back:\n%s", d.log)
	}
	d.restart(t)
	r := bento(t, "", "invoke", d.Addr, prot.InvocationToken, "get")
	if r.Code != 5 || !strings.Contains(r.Stderr, "the instance had FS Protect") || !strings.Contains(r.Stderr, "unrecoverable") {
		t.Fatalf("get from the protected dropbox after a restart: %s", r)
	}
	if exists(protDir) {
		t.Error("the protected instance's directory stays after the restart")
	}
	if out, err := cl.Call(ctx(t), plain.InvocationToken, "get"); err != nil || string(out) != plainSecret {
		t.Fatalf("the unprotected dropbox after a restart: %q %v", out, err)
	}
}
