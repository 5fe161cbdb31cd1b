package shard

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/reedsolomon"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// detRand is a deterministic stream of bytes, for golden files.
type detRand struct{ r *rand.ChaCha8 }

func newDetRand(seed byte) *detRand {
	var s [32]byte
	s[0] = seed
	return &detRand{rand.NewChaCha8(s)}
}

func (d *detRand) Read(p []byte) (int, error) { return d.r.Read(p) }

func data(n int) []byte {
	b := make([]byte, n)
	newDetRand(7).Read(b)
	return b
}

// place fills in where the shares went, as the CLI does.
func place(m *Manifest) {
	for i := range m.Shares {
		m.Shares[i].Server = "box" + string(rune('a'+i)) + ".onion:8888"
		m.Shares[i].Instance = "i-" + strings.Repeat(string(rune('0'+i%10)), 8)
		m.Shares[i].InvocationToken = "bento-inv-" + strings.Repeat("A", 43)
		m.Shares[i].ShutdownToken = "bento-sd-" + strings.Repeat("B", 43)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 15, 16, 17, 1000, 1<<20 + 3} {
		for _, nk := range [][2]int{{2, 1}, {2, 2}, {3, 2}, {5, 3}, {4, 4}, {MaxShares, 7}} {
			in := data(size)
			m, shares, err := Split(in, "f", nk[0], nk[1], nil)
			if err != nil {
				t.Fatalf("size %d n %d k %d: %v", size, nk[0], nk[1], err)
			}
			if len(shares) != nk[0] || m.ShareSize != int64((size+16+nk[1]-1)/nk[1]) {
				t.Fatalf("size %d n %d k %d: %d shares of %d bytes", size, nk[0], nk[1], len(shares), m.ShareSize)
			}
			out, err := m.Join(shares)
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("size %d n %d k %d: rebuilt %d bytes (%v), want %d", size, nk[0], nk[1], len(out), err, size)
			}
		}
	}
}

// subsets calls f with every subset of {0..n-1} of size r.
func subsets(n, r int, f func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == r {
			f(cur)
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
}

func keep(shares [][]byte, idx []int) [][]byte {
	out := make([][]byte, len(shares))
	for _, i := range idx {
		out[i] = shares[i]
	}
	return out
}

func TestAnyKOfN(t *testing.T) {
	for _, nk := range [][2]int{{3, 2}, {5, 3}, {5, 2}, {4, 1}} {
		n, k := nk[0], nk[1]
		in := data(100_003)
		m, shares, err := Split(in, "", n, k, nil)
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		subsets(n, k, func(idx []int) {
			count++
			out, err := m.Join(keep(shares, idx))
			if err != nil || !bytes.Equal(out, in) {
				t.Errorf("n %d k %d: shares %v: %v", n, k, idx, err)
			}
		})
		if count == 0 {
			t.Fatal("no subsets tried")
		}
		// n-k+1 missing: k-1 left, too few, and said so.
		subsets(n, k-1, func(idx []int) {
			_, err := m.Join(keep(shares, idx))
			var tf *TooFewError
			if !errors.As(err, &tf) || tf.Good != k-1 || tf.K != k || !strings.Contains(err.Error(), "cannot be rebuilt") || !strings.Contains(err.Error(), "missing") {
				t.Errorf("n %d k %d: only shares %v: %v, want a TooFewError", n, k, idx, err)
			}
		})
	}
}

func TestCorruptShareDetected(t *testing.T) {
	in := data(50_000)
	m, shares, err := Split(in, "", 4, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		lie  func([][]byte) []byte // what box 1 returns instead of share 1
		why  string
	}{
		{"one bit flipped", func(s [][]byte) []byte { b := bytes.Clone(s[1]); b[len(b)/2] ^= 1; return b }, "does not match its SHA-256"},
		{"another share's bytes", func(s [][]byte) []byte { return bytes.Clone(s[2]) }, "does not match its SHA-256"},
		{"truncated", func(s [][]byte) []byte { return s[1][:len(s[1])-1] }, "the manifest says"},
		{"longer", func(s [][]byte) []byte { return append(bytes.Clone(s[1]), 0) }, "the manifest says"},
		{"empty", func(s [][]byte) []byte { return []byte{} }, "the manifest says"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := [][]byte{shares[0], c.lie(shares), shares[2], shares[3]}
			if err := m.Check(1, got[1]); err == nil || !strings.Contains(err.Error(), c.why) {
				t.Errorf("Check: %v, want %q", err, c.why)
			}
			// With enough honest shares the lie is passed over.
			out, err := m.Join(got)
			if err != nil || !bytes.Equal(out, in) {
				t.Errorf("Join with one lying box and three honest ones: %v", err)
			}
			// With only k shares, one a lie: too few, and why.
			_, err = m.Join([][]byte{shares[0], got[1], nil, nil})
			var tf *TooFewError
			if !errors.As(err, &tf) || tf.Good != 1 || !strings.Contains(tf.Bad[1].Error(), c.why) {
				t.Errorf("Join with one honest share and one lie: %v", err)
			}
		})
	}
	// The shares are untouched by Join (a caller may try again).
	for i, s := range shares {
		if m.Check(i, s) != nil {
			t.Errorf("share %d changed", i)
		}
	}
}

// TestNoShareRevealsPlaintext: a file made of a known pattern; no share
// holds any 16 bytes of it. The code alone would not do this: it is
// systematic, and coding the plaintext puts it in the data shares as it
// is (checked below, so the test can tell). Encrypting first does.
func TestNoShareRevealsPlaintext(t *testing.T) {
	pattern := []byte("BENTO-SECRET-PATTERN-0123456789-")
	in := bytes.Repeat(pattern, (4<<20)/len(pattern))
	window := pattern[:16]
	for _, nk := range [][2]int{{3, 2}, {5, 3}, {2, 1}} {
		m, shares, err := Split(in, "secret.txt", nk[0], nk[1], nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range shares {
			if bytes.Contains(s, window) {
				t.Errorf("n %d k %d: share %d holds plaintext", nk[0], nk[1], i)
			}
			// Ciphertext looks random: no byte value is far from 1/256.
			var hist [256]int
			for _, b := range s {
				hist[b]++
			}
			for v, c := range hist {
				if exp := len(s) / 256; c < exp/2 || c > exp*2 {
					t.Errorf("n %d k %d: share %d has byte %#x %d times, expected about %d", nk[0], nk[1], i, v, c, exp)
					break
				}
			}
		}
		// The manifest holds the key, not the file.
		mb, _ := json.Marshal(m)
		if bytes.Contains(mb, window) {
			t.Error("the manifest holds plaintext")
		}
	}
	// Without encryption: the plaintext is right there in a data share.
	enc, err := reedsolomon.New(2, 1)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := enc.Split(bytes.Clone(in))
	if err != nil {
		t.Fatal(err)
	}
	if err := enc.Encode(plain); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(plain[0], window) {
		t.Fatal("coding the plaintext did not expose it: this test could not tell")
	}
}

func TestFreshKeys(t *testing.T) {
	in := data(1000)
	a, sa, _ := Split(in, "", 3, 2, nil)
	b, sb, _ := Split(in, "", 3, 2, nil)
	if bytes.Equal(a.Key, b.Key) || bytes.Equal(a.Nonce, b.Nonce) || bytes.Equal(sa[0], sb[0]) {
		t.Error("two splits of one file share a key, a nonce or a share")
	}
	// One file's key does not open the other's shares.
	a.Shares, a.Key = b.Shares, b.Key
	a.Nonce = bytes.Clone(a.Nonce)
	if _, err := a.Join(sb); err == nil || !strings.Contains(err.Error(), "does not authenticate") {
		t.Errorf("joining with another nonce: %v", err)
	}
}

func TestSplitRefuses(t *testing.T) {
	for _, c := range []struct {
		n, k int
		want string
	}{{1, 1, "want from 2 to 32"}, {33, 2, "want from 2 to 32"}, {3, 0, "want from 1 to n"}, {3, 4, "want from 1 to n"}} {
		if _, _, err := Split([]byte("x"), "", c.n, c.k, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("n %d k %d: %v, want %q", c.n, c.k, err, c.want)
		}
	}
	// The shares together are bounded, whatever the file's size: a get
	// may hold all n.
	for _, c := range []struct {
		size int64
		n, k int
		want string // "" fits
	}{
		{MaxSize, 3, 2, ""},
		{MaxSize - tagSize, 2, 1, ""},
		{MaxSize, 2, 1, "at most 2147483648"},
		{MaxSize, 3, 1, "at most 2147483648 (2 GiB); give a larger k or a smaller n"},
		{MaxSize, MaxShares, 1, "at most 2147483648"},
		{MaxSize, MaxShares, 16, "at most 2147483648"},
		{MaxSize - 1024, MaxShares, 16, ""},
		{MaxSize + 1, 2, 2, "want at most 1073741824 bytes"},
		{-1, 2, 2, "want at most"},
	} {
		ss, err := Plan(c.size, c.n, c.k)
		if c.want == "" {
			if err != nil || ss != shareSize(c.size, c.k) || int64(c.n)*ss > MaxStored {
				t.Errorf("Plan(%d, %d, %d) = %d, %v", c.size, c.n, c.k, ss, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Plan(%d, %d, %d): %v, want %q", c.size, c.n, c.k, err, c.want)
		}
	}
	if _, _, err := Split([]byte("x"), "", 3, 2, bytes.NewReader(nil)); err == nil || !strings.Contains(err.Error(), "random key") {
		t.Errorf("no randomness: %v", err)
	}
}

// golden is the manifest of a deterministic split, placed.
func golden(t testing.TB) []byte {
	m, _, err := Split([]byte("hello, shards\n"), "hello.txt", 3, 2, newDetRand(1))
	if err != nil {
		t.Fatal(err)
	}
	place(m)
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestManifestGolden(t *testing.T) {
	got := golden(t)
	path := filepath.Join("testdata", "manifest.golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("manifest changed (go test -update to accept):\n%s\nwant:\n%s", got, want)
	}
	m, err := Parse(want)
	if err != nil {
		t.Fatal(err)
	}
	if m.N != 3 || m.K != 2 || m.Size != 14 || m.Name != "hello.txt" || m.Shares[2].Server != "boxc.onion:8888" {
		t.Errorf("parsed %+v", m)
	}
}

func TestParse(t *testing.T) {
	base := golden(t)
	edit := func(f func(map[string]any)) []byte {
		var doc map[string]any
		if err := json.Unmarshal(base, &doc); err != nil {
			t.Fatal(err)
		}
		f(doc)
		b, _ := json.Marshal(doc)
		return b
	}
	share := func(doc map[string]any, i int) map[string]any {
		return doc["shares"].([]any)[i].(map[string]any)
	}
	cases := []struct {
		name string
		in   []byte
		want string // "" parses
	}{
		{"golden", base, ""},
		{"empty", nil, "not a shard manifest"},
		{"not json", []byte("n=3"), "not a shard manifest"},
		{"trailing", append(bytes.Clone(base), []byte("{}")...), "something follows"},
		{"too large", bytes.Repeat([]byte(" "), MaxManifest+1), "at most 65536"},
		{"unknown field", edit(func(d map[string]any) { d["mode"] = "x" }), "unknown field"},
		{"version", edit(func(d map[string]any) { d["version"] = 2 }), "version 2"},
		{"n too small", edit(func(d map[string]any) { d["n"] = 1 }), "want from 2 to 32"},
		{"n too large", edit(func(d map[string]any) { d["n"] = 1000 }), "want from 2 to 32"},
		{"k zero", edit(func(d map[string]any) { d["k"] = 0 }), "want from 1 to n"},
		{"k above n", edit(func(d map[string]any) { d["k"] = 4 }), "want from 1 to n"},
		{"negative size", edit(func(d map[string]any) { d["size"] = -1 }), "want at most"},
		{"huge size", edit(func(d map[string]any) { d["size"] = 1 << 40 }), "want at most"},
		{"shares too large together", edit(func(d map[string]any) { d["size"], d["k"], d["share_size"] = 1<<30, 1, 1<<30+16 }), "give a larger k or a smaller n"},
		{"share size", edit(func(d map[string]any) { d["share_size"] = 16 }), "share_size 16"},
		{"cipher", edit(func(d map[string]any) { d["cipher"] = "none" }), "cipher"},
		{"short key", edit(func(d map[string]any) { d["key"] = "AAAA" }), "key of 3 bytes"},
		{"fewer shares", edit(func(d map[string]any) { d["shares"] = d["shares"].([]any)[:2] }), "2 shares listed"},
		{"index", edit(func(d map[string]any) { share(d, 1)["index"] = 2 }), "share 1 has index 2"},
		{"same box twice", edit(func(d map[string]any) { share(d, 2)["server"] = "BOXA.onion:8888" }), "same box"},
		{"same box twice, once with a pin", edit(func(d map[string]any) {
			share(d, 2)["server"] = "boxa.onion:8888#sha256:" + strings.Repeat("0", 64)
		}), "same box"},
		{"no server", edit(func(d map[string]any) { share(d, 0)["server"] = "" }), "want HOST:PORT"},
		{"server with a space", edit(func(d map[string]any) { share(d, 0)["server"] = "a b:1" }), "want HOST:PORT"},
		{"control in name", edit(func(d map[string]any) { d["name"] = "a\x1b[2Jb" }), "not printable"},
		{"long name", edit(func(d map[string]any) { d["name"] = strings.Repeat("a", 600) }), "at most 512"},
		{"swapped tokens", edit(func(d map[string]any) {
			s := share(d, 0)
			s["invocation_token"], s["shutdown_token"] = s["shutdown_token"], s["invocation_token"]
		}), "want a token bento-inv-"},
		{"bare prefix", edit(func(d map[string]any) { share(d, 0)["shutdown_token"] = "bento-sd-" }), "want a token bento-sd-"},
		{"hash short", edit(func(d map[string]any) { share(d, 0)["sha256"] = "abcd" }), "64 lowercase hex"},
		{"hash upper", edit(func(d map[string]any) {
			share(d, 0)["sha256"] = strings.ToUpper(share(d, 0)["sha256"].(string))
		}), "64 lowercase hex"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Parse(c.in)
			if c.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if _, err := m.Marshal(); err != nil {
					t.Fatalf("Marshal of what parsed: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse: %v, want %q", err, c.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(golden(f))
	f.Add([]byte(`{"version":1,"n":2,"k":1,"size":0,"cipher":"aes-256-gcm","shares":[]}`))
	f.Add([]byte(`{"version":1,"n":32,"k":32,"size":1073741824,"share_size":33554433}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		// What parses is within its bounds and writes back as it reads.
		if m.N < 2 || m.N > MaxShares || m.K < 1 || m.K > m.N || len(m.Shares) != m.N || m.Size > MaxSize || m.ShareSize*int64(m.K) < m.Size+tagSize || m.ShareSize*int64(m.N) > MaxStored {
			t.Fatalf("out of bounds: %+v", m)
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("Marshal of what parsed: %v", err)
		}
		m2, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse of Marshal: %v", err)
		}
		out2, _ := m2.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("not stable:\n%s\n%s", out, out2)
		}
		// Joining made-up shares fails cleanly or rebuilds what the
		// hashes allow; it never panics.
		if m.ShareSize <= 4096 {
			shares := make([][]byte, m.N)
			for i := range shares {
				shares[i] = make([]byte, m.ShareSize)
			}
			m.Join(shares)
		}
	})
}

// TestName: whatever a file is called, its manifest can be written (a
// name it could not hold would fail the put after every share is
// placed).
func TestName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"report.pdf", "report.pdf"},
		{"", ""},
		{"a\nb", "a?b"},
		{"\x1b[2Jx", "?[2Jx"},
		{"bad\xffutf8", "bad?utf8"},
		{"é€\u202e", "é€?"},
		{strings.Repeat("a", 600), strings.Repeat("a", 512)},
		{strings.Repeat("é", 300), strings.Repeat("é", 256)},
		{"a" + strings.Repeat("é", 300), "a" + strings.Repeat("é", 255)},
	} {
		if got := Name(c.in); got != c.want {
			t.Errorf("Name(%q) = %q, want %q", c.in, got, c.want)
		}
		m, _, err := Split([]byte("x"), c.in, 2, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		place(m)
		if m.Name != c.want {
			t.Errorf("Split kept the name %q, want %q", m.Name, c.want)
		}
		if _, err := m.Marshal(); err != nil {
			t.Errorf("name %q: %v", c.in, err)
		}
	}
}

// TestParamsBound: n, k and the size are bound to the ciphertext (the
// AEAD's additional data), so a manifest that lies about them does not
// rebuild the file even where the data shares alone would (the code is
// systematic: shares 0..k-1 are the same for any n).
func TestParamsBound(t *testing.T) {
	in := data(1000)
	m, shares, err := Split(in, "f", 3, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	lie := *m
	lie.N = 4
	lie.Shares = append(append([]Share(nil), m.Shares...), Share{Index: 3, SHA256: m.Shares[2].SHA256})
	if _, err := lie.Join([][]byte{shares[0], shares[1], nil, nil}); err == nil || !strings.Contains(err.Error(), "does not authenticate") {
		t.Errorf("n = 4 for a file split with n = 3: %v", err)
	}
	// The same shares with the true manifest do.
	if out, err := m.Join([][]byte{shares[0], shares[1], nil}); err != nil || !bytes.Equal(out, in) {
		t.Errorf("the true manifest: %v", err)
	}
}
