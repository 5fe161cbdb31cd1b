package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/client"
	"github.com/torbento/bento/internal/shard"
	"github.com/torbento/bento/internal/testutil"
)

// TestTorShard: bento shard spreads a 4 MB file over three boxes reached
// only through the private Tor network (n = 3, k = 2). No box holds any
// of the file: neither the share it serves nor anything on its disk. A
// second, small file loses two of its three shares (their instances ended
// by their shutdown tokens): it cannot be rebuilt, and bento says so.
// Then one box goes (its bentod stopped), and the 4 MB file comes back
// byte for byte from the other two. It reuses the package's private Tor network;
// its own cost is three bentods' onion services and about 10 MB through
// Tor (see the logged times). Most of it is waiting for the onion
// services: it runs in the parallel phase, after the sequential tests and
// before TestDustMote, as TestDelayMail does.
func TestTorShard(t *testing.T) {
	beforeMote.Add(1)
	defer beforeMote.Done()
	t.Parallel()
	n := tornet(t)
	start := time.Now()
	exits := n.Exits()
	if len(exits) < 3 {
		t.Fatalf("the private network has %d exits, want 3", len(exits))
	}
	boxes := startTorBentods(t, testutil.Binaries(t), exits[:3], "")
	t.Logf("three boxes published in %s", time.Since(start).Round(time.Second))

	dir := t.TempDir()
	file := filepath.Join(dir, "secret.bin")
	plain := make([]byte, 4<<20)
	rand.Read(plain)
	if err := os.WriteFile(file, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	mpath := filepath.Join(dir, "secret.shard")
	var addrs []string
	for _, b := range boxes {
		addrs = append(addrs, b.Onion)
	}
	r := bentoTor(t, n, "shard", "put", file, "-n", "3", "-k", "2", "--boxes", strings.Join(addrs, ","), "-o", mpath)
	if r.Code != 0 || !strings.Contains(r.Stdout, "any 2 rebuild it") {
		t.Fatalf("shard put: %s", r)
	}
	t.Logf("put done at %s", time.Since(start).Round(time.Second))
	st, err := os.Stat(mpath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the manifest: %v, mode %v, want 0600", err, st.Mode())
	}
	raw, _ := os.ReadFile(mpath)
	m, err := shard.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range m.Shares {
		if s.Server != boxes[i].Onion {
			t.Fatalf("share %d went to %s, want %s", i, s.Server, boxes[i].Onion)
		}
	}

	// No share alone reveals the file: not what the box serves, not what
	// its disk holds. Windows of the plaintext from every part of it are
	// looked for; a share of the plaintext itself (the code is
	// systematic) would hold one of them.
	var windows [][]byte
	for off := 0; off+64 <= len(plain); off += len(plain) / 64 {
		windows = append(windows, plain[off:off+64])
	}
	for i, b := range boxes {
		cl := client.New(b.Addr) // the box's loopback port: what it holds, without Tor
		share, err := cl.Call(ctx(t), m.Shares[i].InvocationToken, "get")
		if err != nil {
			t.Fatalf("share %d from its box: %v", i, err)
		}
		if sum := sha256.Sum256(share); hex.EncodeToString(sum[:]) != m.Shares[i].SHA256 {
			t.Fatalf("share %d as its box holds it does not match the manifest", i)
		}
		disk := readTree(t, b.DataDir)
		// The scan sees what the box stored: the share's own bytes.
		if !bytes.Contains(disk, share[len(share)/2:len(share)/2+64]) {
			t.Fatalf("box %d: the share's bytes are not found on its disk: the scan below could not tell", i)
		}
		for _, w := range windows {
			if bytes.Contains(share, w) || bytes.Contains(disk, w) {
				t.Fatalf("box %d holds part of the plaintext", i)
			}
		}
	}

	// A second, small file on the same boxes: two of its shares' instances
	// end by their shutdown tokens, and one share is too few for it.
	small := filepath.Join(dir, "small.txt")
	os.WriteFile(small, plain[:100_000], 0o600)
	spath := filepath.Join(dir, "small.shard")
	if r := bentoTor(t, n, "shard", "put", small, "-n", "3", "-k", "2", "--boxes", strings.Join(addrs, ","), "-o", spath); r.Code != 0 {
		t.Fatalf("shard put of the small file: %s", r)
	}
	raw, _ = os.ReadFile(spath)
	sm, err := shard.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1} {
		if r := bentoTor(t, n, "shutdown", boxes[i].Onion, sm.Shares[i].ShutdownToken); r.Code != 0 {
			t.Fatalf("shutdown of the small file's share %d: %s", i, r)
		}
	}
	// (Not bentoTor, which tries again on exit 4.)
	r = bento(t, "", "--tor-socks", n.Client().SocksAddr(), "shard", "get", spath, "-o", filepath.Join(dir, "none.bin"))
	if r.Code != 8 || !strings.Contains(r.Stderr, "only 1 of the 3 shares could be fetched and checked, and small.txt needs 2: it cannot be rebuilt now") ||
		!strings.Contains(r.Stderr, "share 1 on "+boxes[1].Onion+": its Dropbox instance is gone") {
		t.Fatalf("shard get with two shares gone: %s", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "none.bin")); err == nil {
		t.Error("a failed get wrote its output")
	}
	if r := bentoTor(t, n, "shard", "rm", spath); r.Code != 0 {
		t.Errorf("shard rm of the small file: %s", r)
	}
	if _, err := client.New(boxes[2].Addr).Call(ctx(t), sm.Shares[2].InvocationToken, "get"); !client.IsCode(err, client.CodeNotFound) {
		t.Errorf("the small file's share 2 after shard rm: %v, want its instance gone", err)
	}
	t.Logf("the small file's loss shown at %s", time.Since(start).Round(time.Second))

	// Box 2 goes away: its bentod stops (its instances end with it). The
	// 4 MB file comes back from the other two, byte for byte.
	boxes[2].stop(t)
	out := filepath.Join(dir, "back.bin")
	r = bentoTor(t, n, "shard", "get", mpath, "-o", out)
	if r.Code != 0 || !strings.Contains(r.Stderr, "from shares [0 1] of 3") {
		t.Fatalf("shard get with one box gone: %s", r)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, plain) {
		t.Fatalf("rebuilt %d bytes, not the file's %d", len(got), len(plain))
	}
	// (Its shares on boxes 0 and 1 end with their bentods, at cleanup:
	// a shard rm would wait a minute on the stopped box's onion service.)
	t.Logf("TestTorShard took %s", time.Since(start).Round(time.Second))
}

// readTree returns every regular file under dir, concatenated.
func readTree(t *testing.T, dir string) []byte {
	t.Helper()
	var all []byte
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a file that went away meanwhile
		}
		if d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil {
				all = append(all, b...)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}
