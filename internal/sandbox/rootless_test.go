package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/torbento/bento/internal/testutil"
)

func owner(t *testing.T, p string) (uid, gid uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// TestRootlessSpec: once bentod gave up root, a container's user
// namespace maps its root, and only it, to bentod's own IDs, and the
// runner runs as that root; before, the runner is 65534 of a range no one
// on the host uses.
func TestRootlessSpec(t *testing.T) {
	s := &Sandbox{userns: true, mapUID: -1, mapGID: -1}
	spec := s.buildSpec("x", Limits{CPU: 1, Memory: 1 << 20})
	if m := spec.Linux.UIDMappings; len(m) != 1 || m[0] != (ociIDMap{ContainerID: 0, HostID: UserNSBase, Size: 65536}) || spec.Process.User.UID != 65534 {
		t.Fatalf("as root: uid mappings %+v, user %+v", m, spec.Process.User)
	}
	s.mapUID, s.mapGID = 107, 113
	spec = s.buildSpec("x", Limits{CPU: 1, Memory: 1 << 20})
	if m := spec.Linux.UIDMappings; len(m) != 1 || m[0] != (ociIDMap{ContainerID: 0, HostID: 107, Size: 1}) {
		t.Errorf("rootless: uid mappings %+v", m)
	}
	if m := spec.Linux.GIDMappings; len(m) != 1 || m[0] != (ociIDMap{ContainerID: 0, HostID: 113, Size: 1}) {
		t.Errorf("rootless: gid mappings %+v", m)
	}
	if spec.Process.User != (ociUser{UID: 0, GID: 0}) || !spec.Process.NoNewPrivileges || len(spec.Process.Capabilities.Bounding) != 0 || !spec.Root.Readonly {
		t.Errorf("rootless: the runner runs as %+v, no new privileges %v, bounding set %v, read-only root %v",
			spec.Process.User, spec.Process.NoNewPrivileges, spec.Process.Capabilities.Bounding, spec.Root.Readonly)
	}
}

// TestRootlessRefusedWhy: where containers cannot run without root, the
// reason names what is missing.
func TestRootlessRefusedWhy(t *testing.T) {
	for _, tc := range []struct {
		s    *Sandbox
		want string
	}{
		{&Sandbox{place: Placement{Mode: PlaceLegacy}, userns: true}, "cgroups are v1"},
		{&Sandbox{place: Placement{Mode: PlaceLegacy, V2: true, Why: "not delegated"}, userns: true}, "not delegated to it"},
		{&Sandbox{place: Placement{Mode: PlaceDelegated, V2: true}}, "no user namespace"},
	} {
		err := tc.s.Rootless()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.s.place, err, tc.want)
		}
	}
}

// TestChownTree gives a tree to another user without following links.
func TestChownTree(t *testing.T) {
	testutil.Require(t, os.Geteuid() == 0, "root (to give files away)")
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	os.WriteFile(outside, nil, 0o600)
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o700)
	os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte("x"), 0o600)
	os.Symlink(outside, filepath.Join(dir, "link"))
	if err := ChownTree(dir, 4242, 4343); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "a"), filepath.Join(dir, "a", "b", "f"), filepath.Join(dir, "link")} {
		uid, gid := owner(t, p)
		if uid != 4242 || gid != 4343 {
			t.Errorf("%s is %d:%d, want 4242:4343", p, uid, gid)
		}
	}
	if uid, _ := owner(t, outside); uid != 0 {
		t.Errorf("the link's target outside the tree was given away too")
	}
}

// TestBecomeUser: in a child process with many threads (each goroutine
// below holds one of its own), BecomeUser leaves no thread root: a file
// each thread creates afterwards belongs to the user. With
// golang.org/x/sys/unix's per-thread setresuid, the others stayed root
// (bentod made instance directories its user then could not write).
func TestBecomeUser(t *testing.T) {
	if dir := os.Getenv("SANDBOX_BECOME_USER_DIR"); dir != "" {
		becomeUserChild(dir)
		return
	}
	testutil.Require(t, os.Geteuid() == 0, "root (to give it up)")
	// Not t.TempDir(): its parent is root's alone.
	dir, err := os.MkdirTemp("", "become-user-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	cmd := exec.Command(os.Args[0], "-test.run=^TestBecomeUser$")
	cmd.Env = append(os.Environ(), "SANDBOX_BECOME_USER_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 16 {
		t.Fatalf("the child made %d files, want 16:\n%s", len(ents), out)
	}
	for _, e := range ents {
		if uid, gid := owner(t, filepath.Join(dir, e.Name())); uid != 65534 || gid != 65534 {
			t.Errorf("%s was made by %d:%d after BecomeUser(65534, 65534)", e.Name(), uid, gid)
		}
	}
}

func becomeUserChild(dir string) {
	var ready, release, done sync.WaitGroup
	for i := range 16 {
		ready.Add(1)
		release.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread() // a thread of its own, kept
			ready.Done()
			release.Wait()
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o600); err != nil {
				fmt.Println("thread", i, err)
				os.Exit(1)
			}
		}()
	}
	ready.Wait()
	if err := BecomeUser(65534, 65534, []int{65534}); err != nil {
		fmt.Println("BecomeUser:", err)
		os.Exit(1)
	}
	for range 16 {
		release.Done()
	}
	done.Wait()
	os.Exit(0)
}
