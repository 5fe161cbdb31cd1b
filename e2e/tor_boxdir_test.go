package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/privnet"
	"github.com/torbento/bento/internal/testutil"
	"github.com/torbento/bento/internal/torctl"
)

type boxesJSON struct {
	Boxes []struct {
		Relay       string    `json:"relay"`
		Fingerprint string    `json:"fingerprint"`
		Addr        string    `json:"addr"`
		EndsAt      time.Time `json:"ends_at"`
		Capacity    uint64    `json:"capacity_bytes_per_s"`
		Fits        *bool     `json:"fits"`
		Why         string    `json:"why"`
	} `json:"boxes"`
	Rejected []struct {
		Relay  string `json:"relay"`
		Addr   string `json:"addr"`
		Reason string `json:"reason"`
	} `json:"rejected"`
}

// TestBoxDirectory: three boxes announce themselves through their relays'
// ContactInfo; a client with nothing but its tor lists them (bento boxes)
// and runs a function on one chosen at random (run --choose); a relay
// that claims another relay's box is rejected; a box past its drain point
// is listed but never chosen; a box that stops takes its announcement
// back.
func TestBoxDirectory(t *testing.T) {
	n := tornet(t)
	exits := n.Exits()
	if len(exits) < 3 {
		t.Fatalf("the private network has %d exits, want 3", len(exits))
	}
	var boxes []*torDaemon
	for i, e := range exits[:3] {
		extra := "BoxAnnounce 1\n"
		if i == 1 {
			// Ends in 5 minutes: too soon for a 10-minute Dropbox.
			extra += fmt.Sprintf("BoxEndsAt %s\nBoxDrainPeriod 1 minute\n", time.Now().Add(5*time.Minute).UTC().Format(time.RFC3339))
		}
		if i == 2 {
			// Draining from the start: listed, never chosen.
			extra += fmt.Sprintf("BoxEndsAt %s\nBoxDrainPeriod 1 hour\n", time.Now().Add(30*time.Minute).UTC().Format(time.RFC3339))
		}
		boxes = append(boxes, startTorBentodFrom(t, testutil.Binaries(t), e, extra))
	}
	// A relay without a box claims box 0's address.
	mid := n.Node("relay0")
	if mid == nil {
		t.Fatal("no middle relay relay0 in the private network")
	}
	setContact(t, n, mid, "privnet@localhost bentobox:"+boxes[0].Onion)
	t.Cleanup(func() { setContact(t, n, mid, "privnet@localhost") })

	cl := n.Client()
	list := func(args ...string) (boxesJSON, result) {
		r := bento(t, "", append([]string{"--tor-socks", cl.SocksAddr(), "boxes", "--tor-control", cl.ControlAddr(), "--tor-cookie", cl.CookieFile(), "--json"}, args...)...)
		var out boxesJSON
		if r.Code == 0 {
			if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
				t.Fatalf("bento boxes --json: %v\n%s", err, r.Stdout)
			}
		}
		return out, r
	}
	// The announcements travel: relay descriptor, authorities, consensus,
	// the client's descriptor fetch.
	var got boxesJSON
	var r result
	deadline := time.Now().Add(4 * time.Minute)
	for {
		got, r = list("--check", fn("hello"))
		if r.Code == 0 && len(got.Boxes) == 3 && len(got.Rejected) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the directory did not show 3 boxes and 1 rejected claim in 4 minutes: %s\n%+v", r, got)
		}
		time.Sleep(3 * time.Second)
	}
	byAddr := map[string]int{}
	for i, b := range boxes {
		byAddr[b.Onion] = i
	}
	for _, b := range got.Boxes {
		i, ok := byAddr[b.Addr]
		if !ok {
			t.Errorf("listed box %s is none of ours", b.Addr)
			continue
		}
		if b.Relay != exits[i].Name || b.Fits == nil || b.Capacity == 0 {
			t.Errorf("box %d listed as %+v, want beside %s with a capacity and a fit", i, b, exits[i].Name)
		}
		switch {
		case i == 2 && (*b.Fits || !strings.Contains(b.Why, "takes no new functions") || b.EndsAt.IsZero()):
			t.Errorf("the draining box: %+v", b)
		case i != 2 && !*b.Fits:
			t.Errorf("box %d does not fit hello: %s", i, b.Why)
		}
	}
	if rj := got.Rejected[0]; rj.Relay != mid.Name || rj.Addr != boxes[0].Onion || !strings.Contains(rj.Reason, "names relay") {
		t.Errorf("the false claim: %+v", rj)
	}

	// Run on a chosen box, a few times: never the draining one.
	chosen := map[string]int{}
	for i := 0; i < 4; i++ {
		r := bentoTorRetry(t, cl, "run", "--choose", "--tor-control", cl.ControlAddr(), "--tor-cookie", cl.CookieFile(), fn("hello"))
		if r.Code != 0 || !strings.Contains(r.Stdout, "hello") {
			t.Fatalf("run --choose: %s", r)
		}
		_, after, ok := strings.Cut(r.Stderr, "chose box ")
		addr, _, _ := strings.Cut(after, " ")
		if !ok {
			t.Fatalf("run --choose did not say which box: %s", r)
		}
		chosen[addr]++
	}
	if chosen[boxes[2].Onion] > 0 {
		t.Errorf("the draining box was chosen: %v", chosen)
	}

	// bento shard wants three different boxes that can hold a 10-minute
	// Dropbox: only box 0 can (box 1 ends too soon, box 2 drains), so it
	// places nothing and says why.
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, []byte("three boxes or none"), 0o600)
	// The client's tor may not hold every relay's descriptor at a given
	// moment (it once listed 1 box of 3): asked again while it lists
	// fewer than the three.
	for try := 0; ; try++ {
		r = bentoTorRetry(t, cl, "shard", "put", file, "--choose", "-n", "3", "--tor-control", cl.ControlAddr(), "--tor-cookie", cl.CookieFile())
		if try == 5 || r.Code != 3 || strings.Contains(r.Stderr, "of the 3 boxes") {
			break
		}
		time.Sleep(5 * time.Second)
	}
	if r.Code != 3 || !strings.Contains(r.Stderr, `3 different boxes are needed, and only 1 of the 3 boxes can take "dropbox"`) || !strings.Contains(r.Stderr, "would outlast it") {
		t.Errorf("shard put --choose with one box that fits: %s", r)
	}
	if _, err := os.Stat(file + ".shard"); err == nil {
		t.Error("a refused shard put wrote a manifest")
	}

	// A composed function picks its Dropbox's box from the directory:
	// only box 0 lives long enough (box 1 ends too soon, box 2 drains).
	body := page(50_000)
	base, _ := webServer(t, body)
	for i := 0; i < 2; i++ {
		r := bentoTorRetry(t, cl, "run", "--destinations", "accept 127.0.0.1:"+portOf(base)+", accept *.onion:*", boxes[1].Onion, fn("browser-dropbox-tor"), base+"/page", "4096", "choose", "1", "tor")
		if r.Code != 0 {
			t.Fatalf("browser-dropbox-tor choosing its Dropbox: %s\n%s", r, boxes[1].log)
		}
		var out struct {
			Server string `json:"server"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil || out.Server != boxes[0].Onion {
			t.Errorf("the Dropbox went to %q (%v), want box 0 %s, the only one whose life covers it", out.Server, err, boxes[0].Onion)
		}
	}

	// A box that stops withdraws its announcement.
	boxes[1].stop(t)
	if c := contact(t, n, exits[1]); strings.Contains(c, "bentobox:") {
		t.Errorf("relay %s still announces a box after bentod stopped: %q", exits[1].Name, c)
	}
}

// bentoTorRetry runs the CLI through the client's tor, retrying while an
// onion service is not yet reachable (exit 4).
func bentoTorRetry(t *testing.T, cl *privnet.Node, args ...string) result {
	t.Helper()
	var r result
	// At most 10 tries and 2 minutes in all: a try can take long when tor
	// does, and the test must still end.
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; i < 10 && time.Now().Before(deadline); i++ {
		if r = bento(t, "", append([]string{"--tor-socks", cl.SocksAddr()}, args...)...); r.Code != 4 {
			return r
		}
		time.Sleep(2 * time.Second)
	}
	return r
}

func relayControl(t testing.TB, n *privnet.Net, nd *privnet.Node) *torctl.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.Control(ctx, nd)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func setContact(t testing.TB, n *privnet.Net, nd *privnet.Node, v string) {
	t.Helper()
	c := relayControl(t, n, nd)
	defer c.Close()
	kv, err := torctl.KV("ContactInfo", v)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Do(ctx, torctl.MustCommand("SETCONF", kv)); err != nil {
		t.Fatal(err)
	}
}

func contact(t testing.TB, n *privnet.Net, nd *privnet.Node) string {
	t.Helper()
	c := relayControl(t, n, nd)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Do(ctx, torctl.MustCommand("GETCONF", "ContactInfo"))
	if err != nil {
		t.Fatal(err)
	}
	return r.Lines[0].Text
}
