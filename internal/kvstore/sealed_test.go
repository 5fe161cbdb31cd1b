package kvstore

import (
	"bytes"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/torbento/bento/internal/fsprotect"
)

// recordingReader hands out crypto/rand bytes and keeps them: the test
// knows the key it must never find on disk.
type recordingReader struct{ got []byte }

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := crand.Read(p)
	r.got = append(r.got, p[:n]...)
	return n, err
}

func openSealed(t testing.TB, path string, max int64) (*Store, []byte) {
	t.Helper()
	var rr recordingReader
	k, err := fsprotect.NewKeyFrom(&rr)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{MaxBytes: max, Seal: k})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, rr.got
}

// diskHolds reports whether any file under dir holds b.
func diskHolds(t *testing.T, dir string, b []byte) string {
	t.Helper()
	var found string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			if bytes.Contains(data, b) {
				found = p
			}
		}
		return nil
	})
	return found
}

func TestSealedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "storage.log")
	s, key := openSealed(t, path, 1<<20)
	secrets := map[string]string{}
	for i := range 20 {
		k, v := fmt.Sprintf("diary-%02d.txt", i), fmt.Sprintf("PLAINTEXT-SECRET-%02d %s", i, bytes.Repeat([]byte{'x'}, i*50))
		secrets[k] = v
		if err := s.Put(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// Overwrites and deletes, enough to compact several times.
	for round := range 200 {
		k := fmt.Sprintf("diary-%02d.txt", round%20)
		v := fmt.Sprintf("PLAINTEXT-SECRET-%02d round %d %s", round%20, round, bytes.Repeat([]byte{'y'}, 500))
		if err := s.Put(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
		secrets[k] = v
	}
	for _, k := range []string{"diary-03.txt", "diary-04.txt"} {
		if err := s.Delete(k); err != nil {
			t.Fatal(err)
		}
		delete(secrets, k)
	}
	if s.FileSize() >= int64(200*500) {
		t.Errorf("file of %d bytes: never compacted", s.FileSize())
	}
	for k, want := range secrets {
		v, ok, err := s.Get(k)
		if err != nil || !ok || string(v) != want {
			t.Fatalf("Get(%q) = %.40q %v %v", k, v, ok, err)
		}
		if n, _ := s.Size(k); n != len(want) {
			t.Errorf("Size(%q) = %d, want %d", k, n, len(want))
		}
	}
	if _, ok, err := s.Get("diary-03.txt"); ok || err != nil {
		t.Errorf("deleted key: ok %v err %v", ok, err)
	}
	if got := len(s.Keys()); got != 18 {
		t.Errorf("%d keys, want 18", got)
	}
	for _, needle := range [][]byte{[]byte("PLAINTEXT-SECRET"), []byte("diary-"), key, key[:16], key[16:]} {
		if p := diskHolds(t, dir, needle); p != "" {
			t.Errorf("%s holds %q", p, needle)
		}
	}
	// The charge is the plaintext's, as for any store; the file stays
	// within it.
	if s.FileSize() > s.Charged()*2+64<<10 {
		t.Errorf("file %d bytes for %d charged", s.FileSize(), s.Charged())
	}
	// Reopened (a restart: the key is gone), the store is empty.
	s.Close()
	s2, _ := openSealed(t, path, 1<<20)
	if n := s2.Len(); n != 0 || s2.FileSize() != 0 {
		t.Errorf("reopened with a new key: %d keys, %d bytes", n, s2.FileSize())
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Errorf("the old sealed file was not emptied: %v %v", st, err)
	}
}

func TestSealedTamper(t *testing.T) {
	type setup struct {
		s    *Store
		path string
	}
	mk := func(t *testing.T) setup {
		path := filepath.Join(t.TempDir(), "storage.log")
		s, _ := openSealed(t, path, 1<<20)
		// Equal lengths, so a swap keeps every offset.
		for _, kv := range [][2]string{{"alice", "alice's secret!"}, {"bobby", "bobby's secret!"}} {
			if err := s.Put(kv[0], []byte(kv[1])); err != nil {
				t.Fatal(err)
			}
		}
		return setup{s, path}
	}
	recLen := int64(sealedHdr + len("alice's secret!") + fsprotect.Overhead)
	edit := func(t *testing.T, path string, f func(b []byte) []byte) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, f(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		tamper func(t *testing.T, su setup)
		bad    []string // keys whose Get must fail
	}{
		{"byte flipped in a value", func(t *testing.T, su setup) {
			edit(t, su.path, func(b []byte) []byte { b[recLen+sealedHdr+14] ^= 1; return b })
		}, []string{"bobby"}},
		{"length field changed", func(t *testing.T, su setup) {
			edit(t, su.path, func(b []byte) []byte { b[3]++; return b })
		}, []string{"alice"}},
		{"records swapped", func(t *testing.T, su setup) {
			edit(t, su.path, func(b []byte) []byte {
				a, c := bytes.Clone(b[:recLen]), bytes.Clone(b[recLen:2*recLen])
				return append(append(c, a...), b[2*recLen:]...)
			})
		}, []string{"alice", "bobby"}},
		{"one record copied over another", func(t *testing.T, su setup) {
			edit(t, su.path, func(b []byte) []byte { copy(b[recLen:], b[:recLen]); return b })
		}, []string{"bobby"}},
		{"the key's older value copied over its newer one", func(t *testing.T, su setup) {
			// alice's first record stays in the file, dead, at offset 0:
			// put back over her new one, it would roll her value back.
			if err := su.s.Put("alice", []byte("alice's newer!!")); err != nil {
				t.Fatal(err)
			}
			edit(t, su.path, func(b []byte) []byte { copy(b[2*recLen:], b[:recLen]); return b })
		}, []string{"alice"}},
		{"file truncated", func(t *testing.T, su setup) {
			edit(t, su.path, func(b []byte) []byte { return b[:recLen+5] })
		}, []string{"bobby"}},
		{"record from an earlier file", func(t *testing.T, su setup) {
			old, _ := os.ReadFile(su.path)
			// Enough dead records to compact: a new file, a new id.
			for i := range 100 {
				if err := su.s.Put("filler", bytes.Repeat([]byte{byte(i)}, 4096)); err != nil {
					t.Fatal(err)
				}
			}
			if err := su.s.Delete("filler"); err != nil {
				t.Fatal(err)
			}
			// compaction sorts keys: alice and bobby are again first, at
			// the same offsets, but in a file of another id.
			if err := su.s.Put("filler", nil); err != nil {
				t.Fatal(err)
			}
			edit(t, su.path, func(b []byte) []byte { copy(b, old[:2*recLen]); return b })
		}, []string{"alice", "bobby"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			su := mk(t)
			c.tamper(t, su)
			for _, k := range c.bad {
				v, ok, err := su.s.Get(k)
				if !errors.Is(err, fsprotect.ErrTampered) {
					t.Errorf("Get(%q) after tampering = %q %v %v, want ErrTampered", k, v, ok, err)
				}
			}
		})
	}
	// Untouched, both read fine (the cases above can fail).
	su := mk(t)
	for _, k := range []string{"alice", "bobby"} {
		if v, ok, err := su.s.Get(k); err != nil || !ok || string(v) != k+"'s secret!" {
			t.Errorf("Get(%q) = %q %v %v", k, v, ok, err)
		}
	}
}

// FuzzSealedRecord replaces a sealed store's file with arbitrary bytes:
// Get must fail or give back exactly what was put, never other bytes, and
// never panic or allocate beyond what the index says. (One store for all
// inputs, its file rewritten for each: the fuzzing stays cheap.)
func FuzzSealedRecord(f *testing.F) {
	f.Add([]byte{}, int64(0))
	f.Add([]byte{0, 0, 0, 40}, int64(0))
	f.Add(bytes.Repeat([]byte{0xff}, 64), int64(3))
	path := filepath.Join(f.TempDir(), "storage.log")
	s, _ := openSealed(f, path, 1<<20)
	want := []byte("the value put there")
	if err := s.Put("k", want); err != nil {
		f.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, at int64) {
		b := bytes.Clone(orig)
		if at < 0 || at > int64(len(b)) {
			at = 0
		}
		b = append(b[:at], data...)
		// In place (no new inode): the store's descriptor sees it.
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		v, ok, err := s.Get("k")
		switch {
		case err != nil:
			if !errors.Is(err, fsprotect.ErrTampered) && !errors.Is(err, io.EOF) {
				t.Fatalf("Get: %v, want ErrTampered", err)
			}
		case !ok || !bytes.Equal(v, want):
			t.Fatalf("Get = %q %v: not what was put", v, ok)
		case len(b) < len(orig) || !bytes.Equal(b[:len(orig)], orig):
			t.Fatalf("a changed record opened: %q", v)
		}
	})
}

// BenchmarkPutGet stores and reads back values of a few sizes, in the
// clear and sealed (FS Protect), on the disk the test's temporary
// directory is on.
func BenchmarkPutGet(b *testing.B) {
	for _, sealed := range []bool{false, true} {
		for _, size := range []int{100, 4 << 10, 256 << 10} {
			name := fmt.Sprintf("plain/%d", size)
			if sealed {
				name = fmt.Sprintf("sealed/%d", size)
			}
			b.Run(name, func(b *testing.B) {
				path := filepath.Join(b.TempDir(), "storage.log")
				var s *Store
				if sealed {
					s, _ = openSealed(b, path, 1<<30)
				} else {
					s = open(b, path, 1<<30)
				}
				v := bytes.Repeat([]byte{'v'}, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				for i := range b.N {
					k := fmt.Sprintf("key-%d", i%64)
					if err := s.Put(k, v); err != nil {
						b.Fatal(err)
					}
					if _, _, err := s.Get(k); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
