package proto

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func plain(n string) bool { return n != "" && !strings.ContainsAny(n, "/.") }

func TestFiles(t *testing.T) {
	in := map[string][]byte{"main": []byte("x = 1"), "lib": []byte("y"), "empty": nil}
	ents, body := PackFiles(in)
	out, err := UnpackFiles(ents, body, plain)
	if err != nil {
		t.Fatal(err)
	}
	for n, b := range in {
		if !bytes.Equal(out[n], b) {
			t.Errorf("%s = %q", n, out[n])
		}
	}
	bad := []struct {
		ents []FileEntry
		body string
	}{
		{[]FileEntry{{"a", 2}}, "a"},
		{[]FileEntry{{"a", 1}}, "ab"},
		{[]FileEntry{{"../x", 1}}, "a"},
		{[]FileEntry{{"a", 1}, {"a", 1}}, "ab"},
		{[]FileEntry{{"a", -1}}, ""},
	}
	for _, b := range bad {
		if _, err := UnpackFiles(b.ents, []byte(b.body), plain); err == nil {
			t.Errorf("UnpackFiles(%v, %q) accepted", b.ents, b.body)
		}
	}
}

func FuzzUnpackFiles(f *testing.F) {
	f.Add("a", 1, "b", 2, []byte("xyz"))
	f.Fuzz(func(t *testing.T, n1 string, s1 int, n2 string, s2 int, body []byte) {
		files, err := UnpackFiles([]FileEntry{{n1, s1}, {n2, s2}}, body, plain)
		if err != nil {
			return
		}
		total := 0
		for _, b := range files {
			total += len(b)
		}
		if total != len(body) {
			t.Fatalf("files hold %d bytes of %d", total, len(body))
		}
	})
}

func TestKeys(t *testing.T) {
	keys := []string{"a", "", "ключ", string(make([]byte, 256))}
	got, err := DecodeKeys(EncodeKeys(keys))
	if err != nil || len(got) != len(keys) {
		t.Fatalf("%q %v", got, err)
	}
	for i := range keys {
		if got[i] != keys[i] {
			t.Fatalf("key %d: %q, want %q", i, got[i], keys[i])
		}
	}
	for _, bad := range [][]byte{{0}, {0, 5, 'a'}} {
		if _, err := DecodeKeys(bad); err == nil {
			t.Errorf("DecodeKeys(%v) accepted a truncated reply", bad)
		}
	}
}

// FuzzDecodeKeys: whatever a (hostile) bentod sends, the runner's decoder
// does not panic, and what it decodes encodes back to the same bytes.
func FuzzDecodeKeys(f *testing.F) {
	f.Add(EncodeKeys([]string{"a", "bc"}))
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := DecodeKeys(b)
		if err != nil {
			return
		}
		if again := EncodeKeys(keys); string(again) != string(b) {
			t.Fatalf("round trip: %x vs %x", again, b)
		}
	})
}

func TestRequestChecks(t *testing.T) {
	long := strings.Repeat("x", MaxToken+1)
	cases := []struct {
		name string
		err  error
		ok   bool
	}{
		{"logs", (&Logs{Token: "bento-inv-x"}).Check(), true},
		{"logs follow offset", (&Logs{Token: "bento-sd-x", Follow: true, Offset: 10}).Check(), true},
		{"logs no token", (&Logs{}).Check(), false},
		{"logs long token", (&Logs{Token: long}).Check(), false},
		{"logs negative offset", (&Logs{Token: "t", Offset: -1}).Check(), false},
		{"update", (&Update{Token: "bento-sd-x", Files: []FileEntry{{"main.star", 1}}}).Check(), true},
		{"update no token", (&Update{}).Check(), false},
		{"update long token", (&Update{Token: long}).Check(), false},
		{"update many files", (&Update{Token: "t", Files: make([]FileEntry, MaxFiles+1)}).Check(), false},
	}
	for _, c := range cases {
		if (c.err == nil) != c.ok {
			t.Errorf("%s: %v, want ok %v", c.name, c.err, c.ok)
		}
	}
}

func TestWelcomeFeatures(t *testing.T) {
	var old Welcome
	if err := json.Unmarshal([]byte(`{"version":1,"server":"bentod/0.2"}`), &old); err != nil || old.Has(FeatureLogs) {
		t.Fatalf("an old welcome: %+v %v", old, err)
	}
	var w Welcome
	if err := json.Unmarshal([]byte(`{"version":1,"server":"bentod/0.3","features":["logs","update"]}`), &w); err != nil || !w.Has(FeatureLogs) || !w.Has(FeatureUpdate) || w.Has("nope") {
		t.Fatalf("a new welcome: %+v %v", w, err)
	}
}

// FuzzClientRequests: whatever header a (hostile) client sends with the
// new requests, decoding and checking it neither panics nor lets a
// checked request through with fields out of bounds.
func FuzzClientRequests(f *testing.F) {
	f.Add([]byte(`{"token":"bento-inv-x","follow":true,"offset":3}`))
	f.Add([]byte(`{"token":"bento-sd-x","manifest":"name = \"a\"","files":[{"name":"main.star","size":3}]}`))
	f.Add([]byte(`{"offset":-1}`))
	f.Add([]byte(`{"offset":1,"skipped":2}`))
	f.Fuzz(func(t *testing.T, hdr []byte) {
		var l Logs
		if json.Unmarshal(hdr, &l) == nil && l.Check() == nil {
			if l.Token == "" || len(l.Token) > MaxToken || l.Offset < 0 {
				t.Fatalf("checked logs request out of bounds: %+v", l)
			}
		}
		var u Update
		if json.Unmarshal(hdr, &u) == nil && u.Check() == nil {
			if u.Token == "" || len(u.Token) > MaxToken || len(u.Files) > MaxFiles {
				t.Fatalf("checked update request out of bounds: %+v", u)
			}
			body := make([]byte, 16)
			_, _ = UnpackFiles(u.Files, body, plain)
		}
		var d LogData
		_ = json.Unmarshal(hdr, &d)
		var e LogEnd
		_ = json.Unmarshal(hdr, &e)
		var w Welcome
		if json.Unmarshal(hdr, &w) == nil {
			_ = w.Has(FeatureLogs)
		}
	})
}
