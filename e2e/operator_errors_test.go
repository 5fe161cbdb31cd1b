package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/testutil"
)

// TestOperatorErrorsTable runs every row of docs/errors-operators.md
// against the real bentod and bentoctl, and checks its message and exit
// status; a row without a case here, or a case without a row, fails.
func TestOperatorErrorsTable(t *testing.T) {
	_, err := exec.LookPath("setpriv")
	testutil.Require(t, err == nil, "setpriv (util-linux)")
	bin := testutil.Binaries(t)
	dir := testutil.TempDir(t)
	runBentod := func(t *testing.T, args ...string) result {
		cmd := exec.Command(filepath.Join(bin, "bentod"), args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.WaitDelay = 5 * time.Second
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("bentod %q did not exit", args)
		}
		return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
	}
	// A bentorc with the harness's addresses and one line of the case's.
	rc := func(t *testing.T, line string) string {
		p := filepath.Join(t.TempDir(), "bentorc")
		os.WriteFile(p, []byte(fmt.Sprintf("DataDirectory %s\n%s\nListenAddress 127.0.0.1:%d\nPolicyAddress 0\n", filepath.Join(testutil.TempDir(t), "data"), line, freePort(t))), 0o644)
		return p
	}
	// One bentod serves the cases that need one running.
	sock := filepath.Join(dir, "run", "control")
	d := startBentod(t, "ControlSocket "+sock+"\n")
	conf, err := os.ReadFile(d.conf)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(t *testing.T, extra string) result {
		os.WriteFile(d.conf, append(append([]byte{}, conf...), extra...), 0o644)
		defer os.WriteFile(d.conf, conf, 0o644)
		return bentoctl(t, sock, "reload")
	}
	cases := map[string]func(t *testing.T) result{
		"config-unknown-keyword": func(t *testing.T) result { return runBentod(t, "-f", rc(t, "MaxMemry 64 MB"), "--verify-config") },
		"config-bad-value":       func(t *testing.T) result { return runBentod(t, "-f", rc(t, "MaxMemory lots"), "--verify-config") },
		"config-bad-log":         func(t *testing.T) result { return runBentod(t, "-f", rc(t, "Log notice printer"), "--verify-config") },
		"config-inconsistent":    func(t *testing.T) result { return runBentod(t, "-f", rc(t, "BoxAnnounce 1"), "--verify-config") },
		"config-missing":         func(t *testing.T) result { return runBentod(t, "-f", filepath.Join(dir, "nonexistent")) },
		"dump-config-kind":       func(t *testing.T) result { return runBentod(t, "--dump-config", "long") },
		"listen-in-use": func(t *testing.T) result {
			p := rc(t, "")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, []byte("ListenAddress "+d.Addr+"\n")...), 0o644)
			return runBentod(t, "-f", p)
		},
		"user-unknown":         func(t *testing.T) result { return runBentod(t, "-f", rc(t, "User nosuchuser")) },
		"control-socket-taken": func(t *testing.T) result { return runBentod(t, "-f", rc(t, "ControlSocket "+sock)) },
		"compat-manifest-over-policy": func(t *testing.T) result {
			mf := filepath.Join(testutil.TempDir(t), "compat.toml")
			os.WriteFile(mf, []byte("[resources]\nmemory = \"1 GB\"\n"), 0o644)
			return runBentod(t, "-f", rc(t, "MaxMemory 64 MB\nCompatListenAddress 127.0.0.1:1\nCompatManifest "+mf), "--verify-config")
		},
		"compat-manifest-sets-function": func(t *testing.T) result {
			mf := filepath.Join(testutil.TempDir(t), "compat.toml")
			os.WriteFile(mf, []byte("function = \"main\"\n"), 0o644)
			return runBentod(t, "-f", rc(t, "CompatListenAddress 127.0.0.1:1\nCompatManifest "+mf), "--verify-config")
		},
		"compat-no-manifest": func(t *testing.T) result {
			return runBentod(t, "-f", rc(t, "CompatListenAddress 127.0.0.1:1"), "--verify-config")
		},
		"control-socket-not-socket": func(t *testing.T) result {
			f := filepath.Join(testutil.TempDir(t), "bentorc.bak")
			os.WriteFile(f, []byte("keep"), 0o644)
			r := runBentod(t, "-f", rc(t, "ControlSocket "+f))
			if b, _ := os.ReadFile(f); string(b) != "keep" {
				t.Errorf("bentod removed the file at ControlSocket")
			}
			return r
		},
		"control-group-unknown": func(t *testing.T) result {
			return runBentod(t, "-f", rc(t, "ControlSocket "+filepath.Join(testutil.TempDir(t), "ctl")+"\nControlSocketGroup nosuchgroup"))
		},
		"reload-transition": func(t *testing.T) result {
			return reload(t, "DataDirectory "+filepath.Join(dir, "elsewhere")+"\n")
		},
		"reload-bad-config": func(t *testing.T) result { return reload(t, "Frobnicate 1\n") },
		"reload-compat-manifest": func(t *testing.T) result {
			mf := filepath.Join(testutil.TempDir(t), "compat.toml")
			os.WriteFile(mf, []byte("[resources]\ncpu = 64\n"), 0o644)
			return reload(t, fmt.Sprintf("CompatListenAddress 127.0.0.1:%d\nCompatManifest %s\n", freePort(t), mf))
		},
		"ctl-end-unknown":   func(t *testing.T) result { return bentoctl(t, sock, "end", "i-nosuch", "x") },
		"ctl-end-no-reason": func(t *testing.T) result { return bentoctl(t, sock, "end", "i-0123") },
		"ctl-no-socket":     func(t *testing.T) result { return bentoctl(t, filepath.Join(dir, "none"), "status") },
		"ctl-stale-socket": func(t *testing.T) result {
			p := filepath.Join(dir, "stale")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
			return bentoctl(t, p, "status")
		},
		"ctl-permission": func(t *testing.T) result {
			cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", filepath.Join(bin, "bentoctl"), "-s", sock, "status")
			var out, errb strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &errb
			cmd.Run()
			return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
		},
	}
	for _, row := range testutil.ErrorRows(t, "errors-operators.md") {
		run, ok := cases[row.ID]
		if !ok {
			t.Errorf("docs/errors-operators.md: row %s has no case in this test", row.ID)
			continue
		}
		delete(cases, row.ID)
		t.Run(row.ID, func(t *testing.T) {
			r := run(t)
			if r.Code != row.Exit || !testutil.MessageIn(r.Stderr, row.Message) {
				t.Errorf("want exit %d and a line %q; got %s", row.Exit, row.Message, r)
			}
		})
	}
	for id := range cases {
		t.Errorf("case %s has no row in docs/errors-operators.md", id)
	}
	// The reloads refused left bentod as it was, and serving.
	if r := bentoctl(t, sock, "status"); r.Code != 0 {
		t.Errorf("bentod after the refused reloads: %s", r)
	}
}
