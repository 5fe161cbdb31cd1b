package proto

import (
	"bytes"
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
