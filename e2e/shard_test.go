package e2e

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/shard"
)

// TestShard: bento shard over three loopback boxes (n = 3, k = 2). A box
// that lies about its share (its Dropbox replaced, through bento update,
// by one that changes the share's first bytes) is caught by the share's
// hash and passed over; with a second share gone the file cannot be
// rebuilt and bento says which shares failed and why; rm ends what is
// left. (Over Tor, with boxes lost: TestTorShard.) 15-25 s, most of it
// starting three bentods with the race detector.
func TestShard(t *testing.T) {
	start := time.Now()
	var boxes []*daemon
	var addrs []string
	for range 3 {
		d := startBentod(t, "")
		boxes = append(boxes, d)
		addrs = append(addrs, d.Addr)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "f.bin")
	plain := make([]byte, 1<<20+5)
	rand.Read(plain)
	os.WriteFile(file, plain, 0o600)
	r := bento(t, "", "shard", "put", file, "--boxes", strings.Join(addrs, ","), "--lifetime", "5m")
	if r.Code != 0 || !strings.Contains(r.Stdout, "f.bin.shard: f.bin in 3 shares") || strings.Count(r.Stderr, "stored on") != 3 {
		t.Fatalf("shard put: %s", r)
	}
	mpath := file + ".shard"
	raw, err := os.ReadFile(mpath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := shard.Parse(raw)
	if err != nil || m.N != 3 || m.K != 2 {
		t.Fatalf("manifest: %v %+v", err, m)
	}
	// A second put never overwrites the manifest, and places nothing.
	if r := bento(t, "", "shard", "put", file, "--boxes", strings.Join(addrs, ",")); r.Code != 2 || !strings.Contains(r.Stderr, "already exists") {
		t.Errorf("a second put onto the manifest: %s", r)
	}

	// Box 1 lies.
	if r := bento(t, "", "update", boxes[1].Addr, m.Shares[1].ShutdownToken, fn("dropbox-liar")); r.Code != 0 {
		t.Fatalf("update to the liar: %s", r)
	}
	get := func(out string) result {
		return bento(t, "", "shard", "get", mpath, "-o", out)
	}
	// Two honest shares are enough; the lie may or may not be in before
	// them, and is never used.
	out := filepath.Join(dir, "back")
	if r := get(out); r.Code != 0 || !strings.Contains(r.Stderr, "rebuilt f.bin (1048581 bytes) from shares [0 2] of 3") {
		t.Fatalf("get with a lying box: %s", r)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, plain) {
		t.Fatalf("rebuilt %d bytes, not the file", len(got))
	}
	// Share 2's instance ends: the liar and share 0 are left, and one good
	// share is too few.
	if r := bento(t, "", "shutdown", boxes[2].Addr, m.Shares[2].ShutdownToken); r.Code != 0 {
		t.Fatal(r)
	}
	r = get(filepath.Join(dir, "none"))
	for _, want := range []string{
		"share 1 on " + boxes[1].Addr + ": share 1 does not match its SHA-256 in the manifest: the box returned other bytes; treated as missing",
		"share 2 on " + boxes[2].Addr + ": its Dropbox instance is gone",
		"only 1 of the 3 shares could be fetched and checked, and f.bin needs 2: it cannot be rebuilt now",
	} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("get with a liar and a share gone: want %q in %s", want, r)
		}
	}
	if r.Code != 8 {
		t.Errorf("exit %d, want 8 (the boxes answered)", r.Code)
	}
	// rm ends the two left (the one gone counts as ended).
	if r := bento(t, "", "shard", "rm", mpath); r.Code != 0 || !strings.Contains(r.Stderr, "the 3 shares of f.bin are shut down") {
		t.Errorf("rm: %s", r)
	}
	for i, b := range boxes {
		if _, err := client.New(b.Addr).Call(ctx(t), m.Shares[i].InvocationToken, "get"); !client.IsCode(err, client.CodeNotFound) {
			t.Errorf("share %d after rm: %v", i, err)
		}
	}
	t.Logf("TestShard took %s", time.Since(start).Round(time.Millisecond))
}
