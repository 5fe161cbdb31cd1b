package privnet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torbento/bento/internal/socks"
	"github.com/torbento/bento/internal/testutil"
	"github.com/torbento/bento/internal/torctl"
)

func TestMain(m *testing.M) {
	if os.Getenv("BENTO_NO_PRIVNET") == "" {
		Isolate()
	}
	os.Exit(m.Run())
}

func TestVotingOffset(t *testing.T) {
	// Launch at 12:00:00.0 with a 2.5 s lead: first vote at :02.5, first
	// valid-after at :07, so the offset is 7 on a 10 s grid.
	launch := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	if got := votingOffset(launch, 2500*time.Millisecond); got != 7 {
		t.Fatalf("offset = %d, want 7", got)
	}
	if got := votingOffset(launch.Add(4*time.Second), 2500*time.Millisecond); got != 1 {
		t.Fatalf("offset = %d, want 1", got)
	}
}

func requireTor(t *testing.T) {
	_, err1 := lookPath("tor")
	_, err2 := lookPath("tor-gencert")
	testutil.Require(t, err1 == nil && err2 == nil, "Debian's tor package (tor, tor-gencert)")
}

// TestNetwork brings a network up, uses it, and checks that Stop leaves no
// tor behind.
func TestNetwork(t *testing.T) {
	requireTor(t)
	ctx := context.Background()
	n, err := Start(ctx, t.TempDir(), Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	if n.ReadyAfter > 60*time.Second {
		t.Errorf("bootstrap took %v, want < 60 s", n.ReadyAfter)
	}
	// Every torrc is safe.
	for _, nd := range n.Nodes {
		b, err := os.ReadFile(nd.Dir + "/torrc")
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.Contains(s, "TestingTorNetwork 1") || strings.Count(s, "DirAuthority ") != 3 || strings.Contains(s, "DirAuthority ") && !strings.Contains(s, "127.0.0.1:5100") {
			t.Errorf("%s torrc is not private:\n%s", nd.Name, s)
		}
	}

	// A web server on loopback, fetched through the client and an exit.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from loopback") })}
	go srv.Serve(ln)
	defer srv.Close()
	get := func(socksAddr, url string) (string, error) {
		cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: (&socks.Dialer{Proxy: socksAddr}).DialContext}}
		resp, err := cl.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if body, err := get(n.Client().SocksAddr(), "http://"+ln.Addr().String()+"/"); err != nil || body != "hello from loopback" {
		t.Fatalf("through Tor: %q %v", body, err)
	}

	// Real tor: SAFECOOKIE and password authentication, and an onion service.
	c, err := n.Control(ctx, n.Exits()[0])
	if err != nil {
		t.Fatalf("SAFECOOKIE against real tor: %v", err)
	}
	defer c.Close()
	pc, err := torctl.Dial(ctx, "tcp", n.Client().ControlAddr())
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Authenticate(ctx, torctl.Auth{Password: Password}); err != nil {
		t.Fatalf("password auth: %v", err)
	}
	pc.Close()
	r, err := c.Do(ctx, torctl.MustCommand("ADD_ONION", "NEW:ED25519-V3", "Flags=DiscardPK", "Port=80,"+ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	_, kv, _ := torctl.ParseLine(r.Lines[0].Text)
	onion := kv["ServiceID"] + ".onion"
	if len(onion) != 62 {
		t.Fatalf("ADD_ONION reply %q", r.Lines[0].Text)
	}
	var body string
	for i := 0; i < 30; i++ { // the descriptor takes a moment to publish
		if body, err = get(n.Client().SocksAddr(), "http://"+onion+"/"); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if body != "hello from loopback" {
		t.Fatalf("onion fetch: %q %v", body, err)
	}

	pids := []int{}
	for _, nd := range n.Nodes {
		pids = append(pids, nd.PID())
	}
	n.Stop()
	for i, pid := range pids {
		if pid == 0 {
			t.Errorf("%s had no PID", n.Nodes[i].Name)
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("tor %s (pid %d) still running after Stop", n.Nodes[i].Name, pid)
		}
	}
}

var lookPath = exec.LookPath
