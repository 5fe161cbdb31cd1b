package boxdir

import (
	"context"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
)

var update = flag.Bool("update", false, "rewrite golden files")

// torKey makes tor's "ED25519-V3:" blob from a seed, as tor expands it.
func torKey(seed byte) (string, ed25519.PrivateKey) {
	s := make([]byte, 32)
	for i := range s {
		s[i] = seed + byte(i)
	}
	h := sha512.Sum512(s)
	h[0] &= 248
	h[31] &= 63
	h[31] |= 64
	return "ED25519-V3:" + base64.StdEncoding.EncodeToString(h[:]), ed25519.NewKeyFromSeed(s)
}

func TestSignerMatchesEd25519(t *testing.T) {
	blob, priv := torKey(1)
	k, err := ParseTorKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().Equal(priv.Public()) {
		t.Fatal("public key differs from the seed's")
	}
	msg := []byte("a message")
	if got, want := k.Sign(msg), ed25519.Sign(priv, msg); string(got) != string(want) {
		t.Fatalf("signature differs from crypto/ed25519's:\n%x\n%x", got, want)
	}
	pub, err := OnionKey(k.Onion() + ".onion")
	if err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("onion address round trip: %v", err)
	}
	for _, bad := range []string{"", "ED25519-V3:", "RSA1024:abcd", "ED25519-V3:" + base64.StdEncoding.EncodeToString(make([]byte, 32))} {
		if _, err := ParseTorKey(bad); err == nil {
			t.Errorf("ParseTorKey(%q) accepted", bad)
		}
	}
}

func TestOnionKeyErrors(t *testing.T) {
	_, priv := torKey(2)
	good := OnionAddress(priv.Public().(ed25519.PublicKey))
	flip := []byte(good)
	flip[10] ^= 1 // another base32 letter: the checksum no longer matches
	if flip[10] < 'a' {
		flip[10] = 'b'
	}
	for _, tc := range []struct{ in, want string }{
		{good[:55], "56 base32"},
		{strings.Repeat("1", 56), "not base32"},
		{string(flip), "checksum"},
		{good[:55] + "a", "version"},
	} {
		if _, err := OnionKey(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OnionKey(%q): %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestContact(t *testing.T) {
	_, priv := torKey(3)
	onion := OnionAddress(priv.Public().(ed25519.PublicKey))
	if a, err := ParseContact("bentobox:" + strings.ToUpper(onion) + ".ONION:80"); err != nil || a.Onion != onion {
		t.Errorf("upper case: %+v %v", a, err)
	}
	a, err := ParseContact("email:op[]example.org bentobox:" + onion + ".onion:8888 ciissversion:2")
	if err != nil || a != (Announcement{Onion: onion, Port: 8888}) {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := ParseContact("email:op[]example.org"); !errors.Is(err, ErrNoBox) {
		t.Errorf("no field: %v", err)
	}
	for _, tc := range []struct{ in, want string }{
		{"bentobox:" + onion + ".onion:0", "port"},
		{"bentobox:" + onion + ".onion:08888", "port"},
		{"bentobox:" + onion + ".onion:70000", "port"},
		{"bentobox:" + onion + ":8888", "ADDRESS.onion:PORT"},
		{"bentobox:abc.onion:8888", "56-character"},
		{"bentobox:" + onion + ".onion.onion:8888", "56-character"},
		{"bentobox:" + onion + ".onion:1 bentobox:" + onion + ".onion:2", "2 boxes"},
		{strings.Repeat("x", MaxContact+1), "at most"},
	} {
		if _, err := ParseContact(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseContact(%.60q): %v, want %q", tc.in, err, tc.want)
		}
	}
	if got := WithField("email:a bentobox:old.onion:1 url:b", a.ContactField()); got != "email:a url:b "+a.ContactField() {
		t.Errorf("WithField: %q", got)
	}
	if got := WithField("email:a "+a.ContactField(), ""); got != "email:a" {
		t.Errorf("WithField removing: %q", got)
	}
}

var (
	end     = time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)
	relayFP = strings.Repeat("AB", 20)
)

func testPolicy() *policy.Public {
	pub := policy.Default().PublicView()
	pub.Nickname = "box1"
	return pub
}

func testStatement(t testing.TB, k *OnionSigner, pub *policy.Public) (Statement, string) {
	st := Statement{Relay: relayFP, Box: Announcement{Onion: k.Onion(), Port: 8888}, Published: end.Add(-time.Hour),
		EndsAt: end, DrainAt: end.Add(-10 * time.Minute), PolicyDigest: PublicDigest(pub)}
	text, err := st.Sign(k)
	if err != nil {
		t.Fatal(err)
	}
	return st, text
}

func TestStatementGolden(t *testing.T) {
	blob, _ := torKey(4)
	k, _ := ParseTorKey(blob)
	st, text := testStatement(t, k, testPolicy())
	golden := filepath.Join("testdata", "statement.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if text != string(want) {
		t.Fatalf("statement changed (run with -update if on purpose):\n%s\nwant:\n%s", text, want)
	}
	got, err := ParseStatement(text)
	if err != nil || !got.Equal(st) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// Any change of a byte that is not the signature's breaks it.
	for i := 0; i < strings.Index(text, "signature "); i++ {
		b := []byte(text)
		b[i] ^= 0x01
		if _, err := ParseStatement(string(b)); err == nil {
			t.Fatalf("statement with byte %d changed (%q) accepted", i, text[max(0, i-5):i+5])
		}
	}
	// Signed by another key: refused.
	other, _ := torKey(5)
	k2, _ := ParseTorKey(other)
	sig := k2.Sign([]byte(SignaturePrefix + text[:strings.Index(text, "signature ")]))
	forged := text[:strings.Index(text, "signature ")] + "signature " + base64.StdEncoding.EncodeToString(sig) + "\n"
	if _, err := ParseStatement(forged); !errors.Is(err, ErrBadSignature) {
		t.Errorf("statement signed by another key: %v", err)
	}
	if _, err := (Statement{Box: Announcement{Onion: k2.Onion(), Port: 1}}).Sign(k); err == nil {
		t.Error("signed a statement for another onion address")
	}
}

func FuzzParseStatement(f *testing.F) {
	blob, _ := torKey(6)
	k, _ := ParseTorKey(blob)
	_, text := testStatement(f, k, testPolicy())
	f.Add(text)
	f.Add("bento-box-statement 1\n")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStatement(s)
		if err != nil {
			return
		}
		if len(st.Relay) != 40 || st.Published.IsZero() {
			t.Fatalf("accepted %+v", st)
		}
	})
}

func FuzzParseContact(f *testing.F) {
	_, priv := torKey(7)
	f.Add("email:x bentobox:" + OnionAddress(priv.Public().(ed25519.PublicKey)) + ".onion:8888")
	f.Add("bentobox:")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseContact(s)
		if err != nil {
			return
		}
		if _, err := OnionKey(a.Onion); err != nil || a.Port < 1 || a.Port > 65535 {
			t.Fatalf("accepted %+v", a)
		}
		if b, err := ParseContact(a.ContactField()); err != nil || b != a {
			t.Fatalf("round trip %+v: %+v %v", a, b, err)
		}
	})
}

const descs = `router box1 127.0.0.1 5003 0 0
identity-ed25519
fingerprint ABAB ABAB ABAB ABAB ABAB ABAB ABAB ABAB ABAB ABAB
bandwidth 1073741824 1073741824 2000000
contact privnet@localhost bentobox:%s.onion:8888
router middle 127.0.0.1 5004 0 0
fingerprint CDCD CDCD CDCD CDCD CDCD CDCD CDCD CDCD CDCD CDCD
bandwidth 1000 2000 3000
contact privnet@localhost
`

const statuses = `r box1 q6urq6urq6urq6urq6urq6urq6s AAAAAAAAAAAAAAAAAAAAAAAAAAA 2026-12-02 12:00:00 127.0.0.1 5003 0
s Exit Fast Running Valid
w Bandwidth=1953
r middle zc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc0 2026-12-02 12:00:00 127.0.0.1 5004 7004
s Fast Valid
w Bandwidth=20 Unmeasured=1
`

func TestParseDirectoryDocuments(t *testing.T) {
	rs, err := ParseDescriptors(fmt.Sprintf(descs, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Nickname != "box1" || rs[0].Fingerprint != relayFP || rs[0].Advertised != 2000000 || !strings.Contains(rs[0].Contact, "bentobox:x") || rs[1].Advertised != 1000 {
		t.Fatalf("%+v", rs)
	}
	st, err := ParseStatuses(statuses)
	if err != nil {
		t.Fatal(err)
	}
	if a := st[relayFP]; a.Weight != 1953000 || a.Unmeasured || !a.Running || a.Addr.String() != "127.0.0.1" || a.ORPort != 5003 || a.DirPort != 0 {
		t.Errorf("box1: %+v", a)
	}
	// (A microdescriptor consensus's r line: no descriptor digest.)
	if m := st[strings.Repeat("CD", 20)]; m.Weight != 20000 || !m.Unmeasured || m.Running || m.ORPort != 5004 || m.DirPort != 7004 {
		t.Errorf("middle: %+v", m)
	}
	for _, bad := range []string{"router a b\n", "router a 1 2 3 4\nfingerprint AB\n", "router a 1 2 3 4\nbandwidth 1 x 3\n"} {
		if _, err := ParseDescriptors(bad); err == nil || !strings.Contains(err.Error(), "line") {
			t.Errorf("ParseDescriptors(%q): %v", bad, err)
		}
	}
	for _, bad := range []string{"r a\n", "r a !!! x 2026-12-02 12:00:00 127.0.0.1 1 0\n", "r a q6urq6urq6urq6urq6urq6urq6s x y z w v\nw Bandwidth=-1\n",
		"r a q6urq6urq6urq6urq6urq6urq6s 2026-12-02 12:00:00 127.0.0.1 0 0\n", "r a q6urq6urq6urq6urq6urq6urq6s 2026-12-02 12:00:00 ::1 5 0\n",
		"r a q6urq6urq6urq6urq6urq6urq6s 2026-12-02 12:00:00 127.0.0.1 5 65536\n"} {
		if _, err := ParseStatuses(bad); err == nil || !strings.Contains(err.Error(), "line") {
			t.Errorf("ParseStatuses(%q): %v", bad, err)
		}
	}
}

func FuzzParseDescriptors(f *testing.F) {
	f.Add(fmt.Sprintf(descs, "x"))
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParseDescriptors(s)
		if err != nil {
			return
		}
		for _, r := range rs {
			if len(r.Fingerprint) != 40 || r.Advertised > 1<<40 || len(r.Contact) > MaxContact+len("…") {
				t.Fatalf("accepted %+v", r)
			}
		}
	})
}

func FuzzParseStatuses(f *testing.F) {
	f.Add(statuses)
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStatuses(s)
		if err != nil {
			return
		}
		for fp, x := range st {
			if len(fp) != 40 || x.Weight > 1<<32*1000 || !x.Addr.Is4() || x.ORPort == 0 {
				t.Fatalf("accepted %s %+v", fp, x)
			}
		}
	})
}

// fakeTor serves the documents; boxes are served by fetch.
type fakeTor struct{ desc, ns string }

func (f fakeTor) GetInfo(_ context.Context, keys ...string) (map[string]string, error) {
	return map[string]string{"desc/all-recent": f.desc, "ns/all": f.ns}, nil
}

func TestDiscover(t *testing.T) {
	blob, _ := torKey(8)
	k, _ := ParseTorKey(blob)
	pub := testPolicy()
	_, text := testStatement(t, k, pub)
	served := *pub
	served.Box = &policy.PublicBox{EndsAt: &end, Statement: text}
	drain := end.Add(-10 * time.Minute)
	served.Box.DrainAt = &drain
	now := end.Add(-time.Hour)

	// The middle relay announces box1's onion address: box1's statement
	// names box1's relay, so middle's claim is refused.
	desc := fmt.Sprintf(descs, k.Onion())
	desc = strings.Replace(desc, "contact privnet@localhost\n", "contact bentobox:"+k.Onion()+".onion:8888\n", 1)
	ns := strings.Replace(statuses, "s Fast Valid", "s Fast Running Valid", 1)
	fetch := func(_ context.Context, addr string) (*policy.Public, []byte, error) {
		if addr != k.Onion()+".onion:8888" {
			return nil, nil, fmt.Errorf("no such box %s", addr)
		}
		c := served
		raw, _ := json.Marshal(&c)
		return &c, raw, nil
	}
	boxes, rejected, err := Discover(context.Background(), fakeTor{desc, ns}, fetch, Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(boxes) != 1 || boxes[0].Relay.Nickname != "box1" || boxes[0].Relay.Weight != 1953000 {
		t.Fatalf("boxes %+v", boxes)
	}
	// A newer bentod's policy, with members this client does not know,
	// still matches its statement: the digest is of what was served.
	var m map[string]json.RawMessage
	raw, _ := json.Marshal(&served)
	_ = json.Unmarshal(raw, &m)
	m["future_member"] = json.RawMessage(`{"x":1}`)
	newer, _ := json.Marshal(m)
	d1, err1 := PolicyDigest(raw)
	d2, err2 := PolicyDigest(newer)
	if err1 != nil || err2 != nil || d1 == d2 {
		t.Errorf("a new member must change the digest: %v %v", err1, err2)
	}
	m["free"] = json.RawMessage(`{"instances":99}`)
	delete(m, "future_member")
	freer, _ := json.Marshal(m)
	if d3, _ := PolicyDigest(freer); d3 != d1 {
		t.Error("free capacity changed the digest")
	}
	if len(rejected) != 1 || rejected[0].Relay.Nickname != "middle" || !strings.Contains(rejected[0].Reason, "names relay "+relayFP) {
		t.Fatalf("rejected %+v", rejected)
	}
	// A policy that differs from the one the statement signed.
	changed := served
	changed.Images = []string{"starlark", "python"}
	fetch2 := func(context.Context, string) (*policy.Public, []byte, error) {
		c := changed
		raw, _ := json.Marshal(&c)
		return &c, raw, nil
	}
	if boxes, rejected, _ = Discover(context.Background(), fakeTor{fmt.Sprintf(descs, k.Onion()), statuses}, fetch2, Options{Now: now}); len(boxes) != 0 || len(rejected) != 1 || !strings.Contains(rejected[0].Reason, "does not match the policy") {
		t.Fatalf("changed policy: %+v %+v", boxes, rejected)
	}
	if _, _, err := Discover(context.Background(), fakeTor{"", ""}, fetch, Options{}); !errors.Is(err, ErrNoDescriptors) {
		t.Fatalf("no descriptors: %v", err)
	}
}

func TestChoose(t *testing.T) {
	m, err := manifest.Parse([]byte("name = \"f\"\n[resources]\nlifetime = \"20 minutes\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	now := end.Add(-time.Hour)
	mk := func(name string, weight uint64, ends time.Time) Box {
		pub := testPolicy()
		pub.Free.Instances = 5
		pub.Max.Lifetime = time.Hour
		b := Box{Relay: Relay{Nickname: name, Weight: weight, Running: true}, Policy: pub}
		if !ends.IsZero() {
			b.Statement.EndsAt, b.Statement.DrainAt = ends, ends.Add(-10*time.Minute)
		}
		return b
	}
	boxes := []Box{
		mk("big", 3000, time.Time{}),
		mk("small", 1000, time.Time{}),
		mk("draining", 1_000_000, now.Add(5*time.Minute)),
		mk("too-soon", 1_000_000, now.Add(15*time.Minute)), // before its drain, but the 20-minute function would outlast it
	}
	boxes = append(boxes, mk("down", 1_000_000, time.Time{}))
	boxes[4].Relay.Running = false
	r := rand.New(rand.NewPCG(1, 2))
	count := map[string]int{}
	for i := 0; i < 4000; i++ {
		b, err := Choose(boxes, m, now, r)
		if err != nil {
			t.Fatal(err)
		}
		count[b.Relay.Nickname]++
	}
	if count["draining"]+count["too-soon"]+count["down"] != 0 || count["big"] < 2800 || count["big"] > 3200 {
		t.Fatalf("choices %v, want big:small about 3:1 and nothing else", count)
	}
	_, err = Choose(boxes[2:], m, now, r)
	for _, want := range []string{"draining (", "takes no new functions", "too-soon (", "would outlast it", "not Running"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("no box fits: %v, want %q", err, want)
		}
	}
	greedy, _ := manifest.Parse([]byte("name = \"g\"\n[resources]\nmemory = \"1 GB\"\n"))
	if ok, why := Fit(boxes[0], greedy, now); ok || !strings.Contains(why, "resources.memory") {
		t.Errorf("a manifest beyond the policy: %v %q", ok, why)
	}
}

func TestChooseN(t *testing.T) {
	m, err := manifest.Parse([]byte("name = \"f\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	now := end.Add(-time.Hour)
	mk := func(name, fp string, weight uint64) Box {
		pub := testPolicy()
		pub.Free.Instances = 5
		pub.Max.Lifetime = time.Hour
		b := Box{Relay: Relay{Nickname: name, Fingerprint: fp, Weight: weight, Running: true}, Policy: pub}
		b.Statement.Box.Onion, b.Statement.Box.Port = strings.Repeat(name[:1], 56), 8888
		return b
	}
	boxes := []Box{mk("a", "AA", 1000), mk("b", "BB", 1000), mk("c", "CC", 8000), mk("d", "DD", 1000)}
	down := mk("e", "EE", 1_000_000)
	down.Relay.Running = false
	twin := mk("a", "FF", 1_000_000) // box a's address again, beside another relay
	boxes = append(boxes, down, twin)
	r := rand.New(rand.NewPCG(3, 4))
	count := map[string]int{}
	for i := 0; i < 2000; i++ {
		got, err := ChooseN(boxes, m, now, r, 3)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, b := range got {
			if seen[b.Addr()] || b.Relay.Nickname == "e" || b.Relay.Fingerprint == "FF" {
				t.Fatalf("choice %d: %v", i, got)
			}
			seen[b.Addr()] = true
			count[b.Relay.Nickname]++
		}
	}
	// c, the heaviest, is in nearly every choice; the others share the rest.
	if count["c"] < 1900 || count["a"]+count["b"]+count["d"] != 6000-count["c"] {
		t.Errorf("choices %v", count)
	}
	if _, err := ChooseN(boxes, m, now, r, 5); err == nil || !strings.Contains(err.Error(), "5 different boxes are needed, and only 4 of the 6") || !strings.Contains(err.Error(), "has its address or its relay") || !strings.Contains(err.Error(), "not Running") {
		t.Errorf("five of four: %v", err)
	}
	if _, err := ChooseN(nil, m, now, r, 2); err == nil || !strings.Contains(err.Error(), "no box is announced") {
		t.Errorf("no boxes: %v", err)
	}
}
