package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/privnet"
)

// torDaemon is a bentod beside one of the private network's exits,
// published as an onion service.
type torDaemon struct {
	*daemon
	Onion string // HOST.onion:PORT
	relay *privnet.Node
}

func startTorBentod(t testing.TB, relay *privnet.Node) *torDaemon {
	t.Helper()
	d := startBentod(t, fmt.Sprintf(`TorControlPort %s
TorCookieFile %s
TorSocksPort %s
OnionService 1
AllowAPI send,recv,log,time,sleep,random,storage,exit,tor.fetch,tor.control,bento
DestinationPolicy reject *:*
`, relay.ControlAddr(), relay.CookieFile(), relay.SocksAddr()))
	var host []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if host, err = os.ReadFile(filepath.Join(d.DataDir, "onion_hostname")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bentod published no onion service; log:\n%s", d.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, port, _ := strings.Cut(d.Addr, ":")
	return &torDaemon{daemon: d, Onion: strings.TrimSpace(string(host)) + ":" + port, relay: relay}
}

// bentoTor runs the CLI through the network's client SocksPort, retrying
// while the onion service's descriptor is not yet reachable (exit 4).
func bentoTor(t *testing.T, n *privnet.Net, args ...string) result {
	t.Helper()
	full := append([]string{"--tor-socks", n.Client().SocksAddr()}, args...)
	var r result
	for i := 0; i < 20; i++ {
		if r = bento(t, "", full...); r.Code != 4 {
			return r
		}
		time.Sleep(time.Second)
	}
	return r
}

func TestTorBrowserOverOnion(t *testing.T) {
	n := tornet(t)
	a := startTorBentod(t, n.Exits()[0])
	body := page(1 << 20)
	base, _ := webServer(t, body)
	// client → Tor → bentod's onion service → Browser → Tor exit → web server.
	r := bentoTor(t, n, "run", a.Onion, fn("browser-tor"), base+"/page", "65536", "tor")
	if r.Code != 0 {
		t.Fatalf("browser over Tor: %s\nbentod log:\n%s", r, a.log)
	}
	if want := padded(body, 65536); !bytes.Equal([]byte(r.Stdout), want) {
		t.Fatalf("got %d bytes, want %d", len(r.Stdout), len(want))
	}
	// The same server by its relay's address: the client's stream leaves
	// Tor at an exit to bentod's loopback address.
	r = bentoTor(t, n, "run", a.Addr, fn("hello"))
	if r.Code != 0 || !strings.Contains(r.Stdout, "hello") {
		t.Fatalf("hello via an exit: %s", r)
	}
}

func TestTorComposition(t *testing.T) {
	n := tornet(t)
	exits := n.Exits()
	a, b := startTorBentod(t, exits[0]), startTorBentod(t, exits[1])
	body := page(300_000)
	base, _ := webServer(t, body)
	r := bentoTor(t, n, "run", a.Onion, fn("browser-dropbox-tor"), base+"/page", "65536", b.Onion, "1", "tor")
	if r.Code != 0 {
		t.Fatalf("browser-dropbox over Tor: %s\nA log:\n%s", r, a.log)
	}
	var box struct {
		Server string `json:"server"`
		Inv    string `json:"invocation_token"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &box); err != nil || box.Server != b.Onion {
		t.Fatalf("output %q: %v", r.Stdout, err)
	}
	a.stop(t)
	g := bentoTor(t, n, "invoke", b.Onion, box.Inv, "get")
	if want := padded(body, 65536); g.Code != 0 || !bytes.Equal([]byte(g.Stdout), want) {
		t.Fatalf("get from B over Tor: %d bytes, want %d: %s", len(g.Stdout), len(want), g)
	}
}

// ctlRun runs control-port command lines in an instance of the torctl
// test function.
func ctlRun(t *testing.T, d *torDaemon, token string, cmds ...string) [][3]any {
	t.Helper()
	arg, _ := json.Marshal(cmds)
	r := bento(t, "", "invoke", d.Addr, token, string(arg))
	if r.Code != 0 {
		t.Fatalf("torctl %q: %s", cmds, r)
	}
	var out [][3]any
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("torctl output %q: %v", r.Stdout, err)
	}
	return out
}

func TestTorFirewall(t *testing.T) {
	n := tornet(t)
	relay := n.Exits()[0]
	d := startTorBentod(t, relay)
	f1 := deployCLI(t, d.daemon, fn("torctl"))
	f2 := deployCLI(t, d.daemon, fn("torctl"))

	// Everything that reconfigures or reveals the relay is refused.
	forbidden := []string{
		"SETCONF ExitPolicy=\"accept *:*\"", "RESETCONF ORPort", "SAVECONF", "GETCONF ControlPort",
		"SIGNAL HALT", "SIGNAL NEWNYM", "TAKEOWNERSHIP", "DROPGUARDS", "MAPADDRESS 10.0.0.1=x.onion",
		"GETINFO address", "GETINFO config-text", "GETINFO traffic/read", "GETINFO entry-guards",
		"GETINFO net/listeners/control", "SETEVENTS BW", "ADD_ONION NEW:ED25519-V3 Flags=Detach Port=80",
		"ADD_ONION NEW:ED25519-V3 Port=80,127.0.0.1:" + fmt.Sprint(relay.ControlPort),
		"REDIRECTSTREAM 1 127.0.0.1", "GETINFO version\r\nSIGNAL HALT",
	}
	for i, res := range ctlRun(t, d, f1.InvocationToken, forbidden...) {
		if res[0].(float64) < 510 || res[0].(float64) > 513 {
			t.Errorf("%q: %v, want a 51x refusal", forbidden[i], res)
		}
	}
	res := ctlRun(t, d, f1.InvocationToken, "GETINFO version", "EXTENDCIRCUIT 0")
	if res[0][0].(float64) != 250 || !strings.Contains(res[0][1].(string), "version=0.4") {
		t.Fatalf("GETINFO version: %v", res[0])
	}
	ext := strings.Fields(res[1][1].(string))
	if res[1][0].(float64) != 250 || len(ext) != 2 || ext[0] != "EXTENDED" {
		t.Fatalf("EXTENDCIRCUIT: %v", res[1])
	}
	circ := ext[1]
	// f2 can neither see nor close f1's circuit; f1 sees it.
	res = ctlRun(t, d, f2.InvocationToken, "CLOSECIRCUIT "+circ, "GETINFO circuit-status")
	if res[0][0].(float64) != 552 {
		t.Errorf("f2 closing f1's circuit: %v, want 552", res[0])
	}
	if strings.Contains(res[1][2].(string), circ+" ") {
		t.Errorf("f2 sees f1's circuit: %q", res[1][2])
	}
	res = ctlRun(t, d, f1.InvocationToken, "GETINFO circuit-status")
	if !strings.HasPrefix(res[0][2].(string), circ+" ") {
		t.Errorf("f1's circuit-status %q lacks its circuit %s", res[0][2], circ)
	}
	// After shutdown nothing f1 created remains on the real tor.
	if r := bento(t, "", "shutdown", d.Addr, f1.ShutdownToken); r.Code != 0 {
		t.Fatalf("shutdown: %s", r)
	}
	c, err := n.Control(ctx(t), relay)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var status string
	for i := 0; i < 50; i++ {
		info, err := c.GetInfo(ctx(t), "circuit-status")
		if err != nil {
			t.Fatal(err)
		}
		status = info["circuit-status"]
		if !hasCircuit(status, circ) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hasCircuit(status, circ) {
		t.Fatalf("circuit %s still open after shutdown:\n%s", circ, status)
	}
}

func hasCircuit(status, id string) bool {
	for _, l := range strings.Split(status, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == id && f[1] != "CLOSED" && f[1] != "FAILED" {
			return true
		}
	}
	return false
}
