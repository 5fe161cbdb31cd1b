package kvstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

func open(t testing.TB, path string, max int64) *Store {
	t.Helper()
	s, err := Open(path, Options{MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPutGetDeleteReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "storage.log")
	s := open(t, path, 1<<20)
	for _, kv := range [][2]string{{"a", "1"}, {"b", "two"}, {"a", "one"}, {"c", ""}} {
		if err := s.Put(kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("missing"); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		for k, want := range map[string]string{"a": "one", "c": ""} {
			v, ok, err := s.Get(k)
			if err != nil || !ok || string(v) != want {
				t.Errorf("Get(%q) = %q %v %v, want %q", k, v, ok, err, want)
			}
		}
		if _, ok, _ := s.Get("b"); ok {
			t.Error("deleted key b is back")
		}
		if got := fmt.Sprint(s.Keys()); got != "[a c]" {
			t.Errorf("Keys = %s", got)
		}
		if want := charge(1, 3) + charge(1, 0); s.Charged() != want {
			t.Errorf("Charged = %d, want %d", s.Charged(), want)
		}
	}
	check(s)
	s.Close()
	check(open(t, path, 1<<20))
}

func TestChargedPerKey(t *testing.T) {
	// 256 KB holds about 4,000 one-byte keys, not 60,000.
	s := open(t, filepath.Join(t.TempDir(), "s"), 256<<10)
	n := 0
	var err error
	for ; n < 100000; n++ {
		if err = s.Put(fmt.Sprintf("%d", n), []byte{1}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) && !errors.Is(err, ErrTooMany) {
		t.Fatalf("after %d keys: %v", n, err)
	}
	if n > (256<<10)/Overhead {
		t.Fatalf("%d keys fit in 256 KB", n)
	}
	if s.FileSize() > 2*(256<<10)+(64<<10) {
		t.Fatalf("file is %d bytes", s.FileSize())
	}
	// A refused put changes nothing, and deleting makes room again.
	before := s.Charged()
	if err := s.Put("big", make([]byte, 300<<10)); !errors.Is(err, ErrFull) {
		t.Fatalf("oversized put: %v", err)
	}
	if s.Charged() != before {
		t.Fatal("a refused put changed the charge")
	}
	for i := 0; i < 100; i++ {
		s.Delete(fmt.Sprintf("%d", i))
	}
	if err := s.Put("again", []byte("x")); err != nil {
		t.Fatalf("after deletes: %v", err)
	}
}

func TestKeyBounds(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s"), 1<<20)
	for _, k := range []string{"", string(make([]byte, MaxKeyLen+1))} {
		if err := s.Put(k, nil); !errors.Is(err, ErrKey) {
			t.Errorf("key of %d bytes: %v", len(k), err)
		}
	}
	// The longest key works (file names could not hold it).
	long := string(bytes.Repeat([]byte("k"), MaxKeyLen))
	if err := s.Put(long, []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := s.Get(long); !ok || string(v) != "v" {
		t.Fatal("long key lost")
	}
}

// TestTornTail cuts the file at every byte of its last record, as a crash
// in the middle of a write would: the key has its old value or its new one.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	s := open(t, path, 1<<20)
	s.Put("k", []byte("old value"))
	s.Put("other", []byte("x"))
	mid := s.FileSize()
	s.Put("k", []byte("the new value"))
	full := s.FileSize()
	s.Close()
	data, _ := os.ReadFile(path)
	for cut := mid; cut <= full; cut++ {
		p := filepath.Join(dir, fmt.Sprintf("cut%d", cut))
		os.WriteFile(p, data[:cut], 0o600)
		c := open(t, p, 1<<20)
		v, _, _ := c.Get("k")
		want := "old value"
		if cut == full {
			want = "the new value"
		}
		if string(v) != want {
			t.Fatalf("cut at %d of %d: k = %q", cut, full, v)
		}
		// The store goes on from the last whole record.
		if err := c.Put("after", []byte("y")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		c = open(t, p, 1<<20)
		if v, ok, _ := c.Get("after"); !ok || string(v) != "y" {
			t.Fatalf("cut at %d: a write after recovery was lost", cut)
		}
	}
}

// TestCompaction keeps overwriting a few keys: the file stays near the
// live data and every value survives the rewrites and a reopen.
func TestCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	s := open(t, path, 1<<20)
	rng := rand.New(rand.NewSource(1))
	want := map[string][]byte{}
	for i := 0; i < 5000; i++ {
		k := fmt.Sprintf("key%d", rng.Intn(20))
		v := make([]byte, rng.Intn(2000))
		rng.Read(v)
		if rng.Intn(10) == 0 {
			s.Delete(k)
			delete(want, k)
			continue
		}
		if err := s.Put(k, v); err != nil {
			t.Fatal(err)
		}
		want[k] = v
	}
	if s.FileSize() > 2*s.Charged()+(64<<10)+4096 {
		t.Errorf("file %d bytes for %d charged", s.FileSize(), s.Charged())
	}
	s.Close()
	s = open(t, path, 1<<20)
	if s.Len() != len(want) {
		t.Fatalf("%d keys after reopen, want %d", s.Len(), len(want))
	}
	for k, v := range want {
		got, ok, err := s.Get(k)
		if err != nil || !ok || !bytes.Equal(got, v) {
			t.Fatalf("%s: %v %v", k, ok, err)
		}
	}
	if _, err := os.Stat(path + ".tmp"); err == nil {
		t.Error("a compaction's temporary file remains")
	}
}

// FuzzOpen reads arbitrary files as stores: no panic, and what loads can
// be used and reloaded unchanged.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed")
	s, _ := Open(seed, Options{MaxBytes: 1 << 20})
	s.Put("a", []byte("1"))
	s.Put("b", []byte("22"))
	s.Delete("a")
	s.Close()
	b, _ := os.ReadFile(seed)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 'k'})
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "s")
		os.WriteFile(p, data, 0o600)
		s, err := Open(p, Options{MaxBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		keys := s.Keys()
		vals := map[string]string{}
		for _, k := range keys {
			v, ok, err := s.Get(k)
			if !ok || err != nil {
				t.Fatalf("listed key %q: %v %v", k, ok, err)
			}
			vals[k] = string(v)
		}
		s.Close()
		s, err = Open(p, Options{MaxBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if len(s.Keys()) != len(keys) {
			t.Fatal("reopening changed the keys")
		}
		for k, v := range vals {
			if got, _, _ := s.Get(k); string(got) != v {
				t.Fatalf("reopening changed %q", k)
			}
		}
	})
}

func TestSetMaxBytes(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "storage.log"), 2*Overhead+20)
	if err := s.Put("a", make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("b", make([]byte, 200)); err == nil {
		t.Fatal("a value beyond the bound was stored")
	}
	s.SetMaxBytes(1 << 20)
	if err := s.Put("b", make([]byte, 200)); err != nil {
		t.Fatalf("after growing: %v", err)
	}
	for i := range 10 { // the key bound grew with it
		if err := s.Put(fmt.Sprint("k", i), nil); err != nil {
			t.Fatalf("key %d after growing: %v", i, err)
		}
	}
	s.SetMaxBytes(Overhead)
	if v, ok, err := s.Get("b"); err != nil || !ok || len(v) != 200 {
		t.Fatalf("what was stored is lost after shrinking: %d bytes, %v %v", len(v), ok, err)
	}
	if err := s.Put("c", []byte("x")); err == nil {
		t.Fatal("a put beyond the smaller bound was taken")
	}
}
