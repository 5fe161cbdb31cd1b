package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/testutil"
)

// TestBoxLifetime: a box with an end (BoxEndsAt) shows it in its public
// policy; refuses a deploy that would outlast it, or shortens it when the
// manifest allows; tells functions (bento.ends_at) and attached clients
// (a notice, at the drain point) when it ends; refuses deploys in its
// drain period; and at the end shuts every instance down with the reason,
// wipes its stored data, and answers its tokens clearly afterwards.
//
// It runs in parallel with TestFlashFlowPrivateNetwork (which waits for
// tor most of the time), after the other tests.
func TestBoxLifetime(t *testing.T) {
	t.Parallel()
	// Room before the drain point for bentod to start and the deploys
	// and calls below on a loaded 2-core machine.
	end := time.Now().Add(38 * time.Second).UTC().Truncate(time.Second)
	drain := end.Add(-12 * time.Second)
	d := startBentod(t, fmt.Sprintf("BoxEndsAt %s\nBoxDrainPeriod 12 seconds", end.Format(time.RFC3339)))
	cl := client.New(d.Addr)

	pol, err := cl.Policy(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if pol.Box == nil || pol.Box.EndsAt == nil || !pol.Box.EndsAt.Equal(end) || !pol.Box.DrainAt.Equal(drain) {
		t.Fatalf("public policy's box: %+v, want ends_at %s, drain_at %s", pol.Box, end, drain)
	}

	// Without min_lifetime, a lifetime beyond the box's end is refused.
	flex, err := client.LoadFunction(fn("boxlife"))
	if err != nil {
		t.Fatal(err)
	}
	fixed := &client.Function{Manifest: []byte(strings.Replace(string(flex.Manifest), `min_lifetime = "5 s"`, "", 1)), Files: flex.Files}
	_, err = cl.Deploy(ctx(t), fixed)
	var pe *client.Error
	if !errors.As(err, &pe) || pe.Code != client.CodeRefused || len(pe.Violations) != 1 || pe.Violations[0].Item != "resources.lifetime" ||
		!strings.Contains(pe.Violations[0].Allowed, "the box ends at "+end.Format(time.RFC3339)) || !strings.Contains(pe.Violations[0].Allowed, "min_lifetime") {
		t.Fatalf("deploy outlasting the box: %v", err)
	}
	// With it, the lifetime is cut to exactly the box's end.
	before := time.Now()
	dep, err := cl.Deploy(ctx(t), flex)
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Lifetime time.Duration `json:"lifetime_ns"`
	}
	if err := json.Unmarshal(dep.Resources, &res); err != nil || res.Lifetime < end.Sub(after) || res.Lifetime > end.Sub(before) {
		t.Fatalf("granted lifetime %v (%v), want what was left to the box's end: %v-%v", res.Lifetime, err, end.Sub(after), end.Sub(before))
	}
	out, err := cl.Call(ctx(t), dep.InvocationToken, "ends")
	if err != nil {
		t.Fatal(err)
	}
	if at, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err != nil || at != end.Unix() {
		t.Errorf("bento.ends_at() = %q, want the box's end %d", out, end.Unix())
	}
	if out, err := cl.Call(ctx(t), dep.InvocationToken, "put"); err != nil || !strings.Contains(string(out), "stored") {
		t.Fatalf("put: %q %v", out, err)
	}
	stored := filepath.Join(d.DataDir, "instances", dep.Instance, "storage.log")
	if _, err := os.Stat(stored); err != nil {
		t.Fatalf("no stored data before the end: %v", err)
	}

	// A client attached through the end, with the CLI.
	cli := exec.Command(filepath.Join(testutil.Binaries(t), "bento"), "invoke", d.Addr, dep.InvocationToken, "wait")
	var cliOut, cliErr syncBuffer
	cli.Stdout, cli.Stderr = &cliOut, &cliErr
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	cliDone := make(chan struct{})
	go func() { _ = cli.Wait(); close(cliDone) }()
	t.Cleanup(func() {
		_ = cli.Process.Kill()
		<-cliDone
	})
	// And one with the library.
	s, err := cl.Invoke(ctx(t), dep.InvocationToken, "wait")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sessDone := make(chan *client.Exit, 1)
	go func() {
		for {
			_, exit, err := s.Recv()
			if err != nil || exit != nil {
				sessDone <- exit
				return
			}
		}
	}()

	time.Sleep(time.Until(drain.Add(1500 * time.Millisecond)))
	_, err = cl.Deploy(ctx(t), flex)
	if !errors.As(err, &pe) || pe.Code != client.CodeRefused || !strings.Contains(pe.Message, "drain period") {
		t.Errorf("deploy in the drain period: %v", err)
	}
	if !strings.Contains(cliErr.String(), "notice from the box: this box ends at "+end.Format(time.RFC3339)) {
		t.Errorf("the attached CLI was not told of the end at the drain point; its stderr:\n%s", cliErr.String())
	}

	var exit *client.Exit
	select {
	case exit = <-sessDone:
	case <-time.After(time.Until(end) + 20*time.Second):
		t.Fatal("the session outlived the box")
	}
	if exit == nil || exit.Status != client.StatusKilled || !strings.Contains(exit.Reason, "the box ended at") {
		t.Errorf("session's end: %+v, want killed because the box ended", exit)
	}
	if len(s.Notices) != 1 || s.Notices[0].Kind != "box_ending" || !s.Notices[0].EndsAt.Equal(end) {
		t.Errorf("the library's session got notices %+v, want one box_ending", s.Notices)
	}
	select {
	case <-cliDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the CLI still runs after the box ended")
	}
	if code := cli.ProcessState.ExitCode(); code == 0 || !strings.Contains(cliErr.String(), "the box ended at") {
		t.Errorf("CLI exit %d at the end, stderr:\n%s", code, cliErr.String())
	}
	if !strings.Contains(cliOut.String(), "tick 0") {
		t.Errorf("the CLI's output before the end was lost: %q", cliOut.String())
	}

	// After the end: stored data wiped (the clients are told of the end
	// as the instances are torn down, so the wipe may finish a moment
	// after the CLI exits), tokens and deploys answered.
	if !waitFor(10*time.Second, func() bool { _, err := os.Stat(stored); return os.IsNotExist(err) }) {
		t.Errorf("stored data still on disk 10 s after the end")
	}
	_, err = cl.Call(ctx(t), dep.InvocationToken, "ends")
	if !errors.As(err, &pe) || pe.Code != client.CodeGone || !strings.Contains(pe.Message, "the box ended at") {
		t.Errorf("invoke after the end: %v", err)
	}
	_, err = cl.Deploy(ctx(t), flex)
	if !errors.As(err, &pe) || pe.Code != client.CodeGone || !strings.Contains(pe.Message, "ended at") {
		t.Errorf("deploy after the end: %v", err)
	}
	if !strings.Contains(d.log.String(), "the box has ended") {
		t.Errorf("bentod's log does not say the box ended:\n%s", d.log.String())
	}

	// SIGHUP with a later end revives the box; SIGHUP with an end moved
	// earlier ends what runs at the new end, for the box's reason.
	setEnd := func(at time.Time) {
		t.Helper()
		conf, err := os.ReadFile(d.conf)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(conf), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "BoxEndsAt ") {
				lines[i] = "BoxEndsAt " + at.Format(time.RFC3339)
			}
		}
		if err := os.WriteFile(d.conf, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		d.cmd.Process.Signal(syscall.SIGHUP)
		for i := 0; ; i++ {
			p, err := cl.Policy(ctx(t))
			if err == nil && p.Box != nil && p.Box.EndsAt != nil && p.Box.EndsAt.Equal(at) {
				return
			}
			if i == 100 {
				t.Fatalf("the policy does not show the new end %s after SIGHUP: %+v %v", at, p, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	setEnd(time.Now().Add(60 * time.Second).UTC().Truncate(time.Second))
	dep2, err := cl.Deploy(ctx(t), flex)
	if err != nil {
		t.Fatalf("deploy after SIGHUP gave the box a later end: %v", err)
	}
	s2, err := cl.Invoke(ctx(t), dep2.InvocationToken, "wait")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	sooner := time.Now().Add(4 * time.Second).UTC().Truncate(time.Second).Add(time.Second)
	setEnd(sooner)
	done := make(chan *client.Exit, 1)
	go func() {
		for {
			_, exit, err := s2.Recv()
			if err != nil || exit != nil {
				done <- exit
				return
			}
		}
	}()
	select {
	case exit := <-done:
		if exit == nil || !strings.Contains(exit.Reason, "the box ended at "+sooner.Format(time.RFC3339)) {
			t.Errorf("the instance's end after the end moved earlier: %+v", exit)
		}
		if late := time.Since(sooner); late < 0 || late > 5*time.Second {
			t.Errorf("the instance ended %v after the moved end", late)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the instance outlived an end moved earlier")
	}
}
