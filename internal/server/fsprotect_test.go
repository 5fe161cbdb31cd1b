package server

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/proto"
)

// keyReader hands out crypto/rand bytes and keeps them, so the test knows
// the key it must never find on disk.
type keyReader struct{ got []byte }

func (r *keyReader) Read(p []byte) (int, error) {
	n, err := crand.Read(p)
	r.got = append(r.got, p[:n]...)
	return n, err
}

// filesHolding lists the files under dir that hold b.
func filesHolding(t *testing.T, dir string, b []byte) []string {
	t.Helper()
	var found []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(data, b) {
				found = append(found, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestProtectedFiles writes what an instance leaves on disk (stored data,
// a session's output and exit, its log, its record) with and without FS
// Protect, and looks for the plaintext and the key in the files.
func TestProtectedFiles(t *testing.T) {
	secrets := map[string]string{
		"stored value":   "STORED-SECRET-4f1c",
		"stored key":     "KEYNAME-SECRET-9a2b",
		"output":         "OUTPUT-SECRET-77de",
		"exit":           "EXIT-SECRET-0c3a",
		"function log":   "LOG-SECRET-51b0",
		"code":           "CODE-SECRET-e6d4",
		"manifest (api)": "MANIFEST-SECRET-2b8f",
		"owner":          "203.0.113.77",
	}
	for _, protect := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "protected"}[protect], func(t *testing.T) {
			s := testServer(t)
			in, _, _ := testInstance(t, s)
			in.owner = secrets["owner"]
			var kr keyReader
			if protect {
				k, err := fsprotect.NewKeyFrom(&kr)
				if err != nil {
					t.Fatal(err)
				}
				in.key = k
				m := *in.mf()
				m.Protect = true
				in.man.Store(&m)
			}
			if err := in.openStore(); err != nil {
				t.Fatal(err)
			}
			defer in.store.Close()
			if err := in.store.Put(secrets["stored key"], []byte(secrets["stored value"])); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(in.dir, "sessions"), 0o700); err != nil {
				t.Fatal(err)
			}
			out, err := newOutLog(filepath.Join(in.dir, "sessions", "s-1"), "s-1", in.sealer())
			if err != nil {
				t.Fatal(err)
			}
			off1, _ := out.append(recData, []byte(secrets["output"]))
			if _, err := out.append(recExit, []byte(`{"status":"error","error":{"message":"`+secrets["exit"]+`"}}`)); err != nil {
				t.Fatal(err)
			}
			if err := in.appendLog(secrets["function log"]); err != nil {
				t.Fatal(err)
			}
			manifestText := "name = \"t\"\n# " + secrets["manifest (api)"] + "\n"
			files := map[string][]byte{"main.star": []byte("def main():\n    return \"" + secrets["code"] + "\"\n")}
			if err := in.saveRecord(manifestText, files); err != nil {
				t.Fatal(err)
			}
			for what, secret := range secrets {
				found := filesHolding(t, in.dir, []byte(secret))
				// JSON keeps the code in base64 when plain.
				if what == "code" && !protect {
					continue
				}
				if protect && len(found) > 0 {
					t.Errorf("the %s is in the clear in %v", what, found)
				}
				if !protect && len(found) == 0 {
					t.Errorf("the %s is nowhere on disk even unprotected: the scan finds nothing", what)
				}
			}
			if protect {
				for _, part := range [][]byte{kr.got, kr.got[:16], kr.got[16:]} {
					if found := filesHolding(t, in.dir, part); len(found) > 0 {
						t.Errorf("the key is on disk: %v", found)
					}
				}
				if len(kr.got) != 32 {
					t.Fatalf("the key took %d bytes", len(kr.got))
				}
			}
			// Everything reads back.
			if v, ok, err := in.store.Get(secrets["stored key"]); err != nil || !ok || string(v) != secrets["stored value"] {
				t.Errorf("stored value read back: %q %v %v", v, ok, err)
			}
			r, err := out.reader()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			kind, n, data, err := out.record(r, 0, true)
			if err != nil || kind != recData || string(data) != secrets["output"] || recHeader+n != off1 {
				t.Errorf("output read back: %d %q %v (n %d, next %d)", kind, data, err, n, off1)
			}
			if _, _, data, err := out.record(r, off1, true); err != nil || !strings.Contains(string(data), secrets["exit"]) {
				t.Errorf("exit read back: %q %v", data, err)
			}
			if data, _, _, _, err := in.readLog(0, logChunk); err != nil || !strings.Contains(string(data), secrets["function log"]) {
				t.Errorf("log read back: %q %v", data, err)
			}
			if got, err := in.loadFiles(); err != nil || !bytes.Equal(got["main.star"], files["main.star"]) {
				t.Errorf("code read back: %q %v", got, err)
			}
		})
	}
}

// TestProtectedOutLogTamper changes a protected session log on disk: the
// record fails to open, whether a byte changed or the whole log is
// another session's.
func TestProtectedOutLogTamper(t *testing.T) {
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mk := func(id string) *outLog {
		l, err := newOutLog(filepath.Join(dir, id), id, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.append(recData, []byte("same length output")); err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := mk("s-a"), mk("s-b")
	read := func(l *outLog) error {
		r, err := l.reader()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		_, _, _, err = l.record(r, 0, true)
		return err
	}
	if err := read(a); err != nil {
		t.Fatalf("untouched: %v", err)
	}
	// b's file now holds a's record, same length, same offset.
	ab, _ := os.ReadFile(a.path)
	if err := os.WriteFile(b.path, ab, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := read(b); !errors.Is(err, fsprotect.ErrTampered) {
		t.Errorf("another session's record: %v, want ErrTampered", err)
	}
	ab[len(ab)-1] ^= 1
	if err := os.WriteFile(a.path, ab, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := read(a); !errors.Is(err, fsprotect.ErrTampered) {
		t.Errorf("a byte changed: %v, want ErrTampered", err)
	}
}

// TestRestoreProtected starts a second server on what the first left: a
// protected instance is not restored, its files go, and its tokens are
// answered with why.
func TestRestoreProtected(t *testing.T) {
	s := testServer(t)
	s.instDir = t.TempDir()
	in, inv, sd := testInstance(t, s)
	in.dir = filepath.Join(s.instDir, in.id)
	if err := os.MkdirAll(in.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	in.key = k
	m := *in.mf()
	m.Protect = true
	in.man.Store(&m)
	if err := in.openStore(); err != nil {
		t.Fatal(err)
	}
	if err := in.store.Put("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	in.store.Close()
	if err := in.saveRecord("name = \"t\"\nprotect = true\n", map[string][]byte{"main.star": []byte("def main():\n    pass\n")}); err != nil {
		t.Fatal(err)
	}
	s2 := testServer(t)
	s2.instDir, s2.restore = s.instDir, true
	s2.recoverInstances()
	if n := len(s2.instances); n != 0 {
		t.Fatalf("%d instances restored", n)
	}
	if _, err := os.Stat(in.dir); !os.IsNotExist(err) {
		t.Errorf("the protected instance's files remain: %v", err)
	}
	for _, tok := range []string{inv, sd} {
		e := s2.tokenError(tok)
		if e.Code != proto.CodeGone || !strings.Contains(e.Message, "the instance ended: bentod restarted, and the instance had FS Protect") ||
			!strings.Contains(e.Message, "unrecoverable") {
			t.Errorf("token answered with %+v", e)
		}
	}
}

// TestProtectedRecordRollback puts an older record of a protected
// instance back on disk (its code before an update): it must not open,
// or a disk writer could make the next runner start the old code.
func TestProtectedRecordRollback(t *testing.T) {
	s := testServer(t)
	in, _, _ := testInstance(t, s)
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	in.key = k
	path := filepath.Join(in.dir, recordFile)
	v1 := map[string][]byte{"main.star": []byte("def main():\n    return 1\n")}
	v2 := map[string][]byte{"main.star": []byte("def main():\n    return 2\n")}
	if err := in.saveRecord("name = \"t\"\nprotect = true\n", v1); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.saveRecord("name = \"t\"\nprotect = true\n", v2); err != nil {
		t.Fatal(err)
	}
	if got, err := in.loadFiles(); err != nil || !bytes.Equal(got["main.star"], v2["main.star"]) {
		t.Fatalf("the updated code: %q %v", got, err)
	}
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := in.loadFiles(); !errors.Is(err, fsprotect.ErrTampered) {
		t.Fatalf("the code before the update, put back: %q %v, want ErrTampered", got, err)
	}
	// An unprotected record in its place, with code in the clear: not
	// this instance's either.
	in.key = nil
	if err := in.saveRecord("name = \"t\"\n", v1); err != nil {
		t.Fatal(err)
	}
	in.key = k
	if got, err := in.loadFiles(); err == nil {
		t.Fatalf("an unprotected record put in place: %q", got)
	}
	// A save that fails leaves the record it did not replace readable
	// (an update refused then keeps the old code).
	if err := in.saveRecord("name = \"t\"\nprotect = true\n", v2); err != nil {
		t.Fatal(err)
	}
	dir := in.dir
	in.dir = filepath.Join(dir, "missing")
	if err := in.saveRecord("name = \"t\"\nprotect = true\n", v1); err == nil {
		t.Fatal("saved into a missing directory")
	}
	in.dir = dir
	if got, err := in.loadFiles(); err != nil || !bytes.Equal(got["main.star"], v2["main.star"]) {
		t.Fatalf("after a failed save: %q %v", got, err)
	}
}

// TestOutLogCutOrLengthened cuts a session log at a record boundary and
// lengthens a record's header on disk: a protected log says it was
// tampered with (the client gets an error frame, not a quiet end), and no
// log, protected or not, takes a header's length beyond its own end (a
// header of 4 GB would otherwise be allocated).
func TestOutLogCutOrLengthened(t *testing.T) {
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		seal    fsprotect.Sealer
		change  func(path string, second int64) error
		want    error // from reading the second record
		wantHdr error // from reading its header alone
	}{
		{"protected, cut at a record boundary", k, func(p string, second int64) error { return os.Truncate(p, second) }, fsprotect.ErrTampered, fsprotect.ErrTampered},
		{"protected, cut inside a record", k, func(p string, second int64) error { return os.Truncate(p, second+recHeader+3) }, fsprotect.ErrTampered, nil},
		{"protected, length 4 GB", k, func(p string, second int64) error { return setLen(p, second, 1<<32-1) }, fsprotect.ErrTampered, fsprotect.ErrTampered},
		{"plain, length 4 GB", nil, func(p string, second int64) error { return setLen(p, second, 1<<32-1) }, errOutLogDamaged, errOutLogDamaged},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := newOutLog(filepath.Join(t.TempDir(), "s-1"), "s-1", c.seal)
			if err != nil {
				t.Fatal(err)
			}
			second, err := l.append(recData, []byte("first"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.append(recExit, []byte(`{"status":"ok"}`)); err != nil {
				t.Fatal(err)
			}
			if err := c.change(l.path, second); err != nil {
				t.Fatal(err)
			}
			r, err := l.reader()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, _, data, err := l.record(r, 0, true); err != nil || string(data) != "first" {
				t.Fatalf("the first record: %q %v", data, err)
			}
			if _, _, _, err := l.record(r, second, false); !errors.Is(err, c.wantHdr) || (c.wantHdr == nil) != (err == nil) {
				t.Errorf("the second record's header: %v, want %v", err, c.wantHdr)
			}
			if _, _, data, err := l.record(r, second, true); !errors.Is(err, c.want) {
				t.Errorf("the second record: %q %v, want %v", data, err, c.want)
			}
		})
	}
}

// setLen writes n as the length in the header of the record at off.
func setLen(path string, off int64, n uint32) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(binary.BigEndian.AppendUint32(nil, n), off+1)
	return err
}

type freeBudget struct{}

func (freeBudget) Acquire(context.Context, int64) error { return nil }
func (freeBudget) Release(int64)                        {}

// TestStreamTamperedOutput streams a protected session whose log was cut
// at a record boundary, or whose record header was lengthened: the
// client gets the output before it, then an error frame that says why,
// never a quiet end.
func TestStreamTamperedOutput(t *testing.T) {
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(string, int64) error{
		"cut":        func(p string, off int64) error { return os.Truncate(p, off) },
		"lengthened": func(p string, off int64) error { return setLen(p, off, 1<<20) },
	} {
		t.Run(name, func(t *testing.T) {
			l, err := newOutLog(filepath.Join(t.TempDir(), "s-1"), "s-1", k)
			if err != nil {
				t.Fatal(err)
			}
			second, _ := l.append(recData, []byte("first"))
			if _, err := l.append(recExit, []byte(`{"status":"ok"}`)); err != nil {
				t.Fatal(err)
			}
			if err := change(l.path, second); err != nil {
				t.Fatal(err)
			}
			var got []string
			send := func(typ uint8, v any, body []byte) error {
				switch typ {
				case proto.TOutput:
					got = append(got, "output "+string(body))
				case proto.TError:
					got = append(got, "error "+v.(*proto.Error).Message)
				default:
					got = append(got, fmt.Sprintf("frame %d", typ))
				}
				return nil
			}
			s := testServer(t)
			if s.streamOutput(freeBudget{}, send, &session{out: l}, 0, make(chan struct{}), nil) {
				t.Error("streamOutput says it sent the exit")
			}
			if len(got) != 2 || got[0] != "output first" || !strings.Contains(got[1], "failed its integrity check (FS Protect)") {
				t.Errorf("frames %q", got)
			}
		})
	}
}

// TestProtectedNameNotLogged deploys a manifest that asks for FS Protect
// to a node that does not offer it: bentod's log, kept on the operator's
// disk, says a manifest was refused without naming the function. An
// unprotected one is named (so the test sees the log).
func TestProtectedNameNotLogged(t *testing.T) {
	for _, c := range []struct {
		manifest string
		named    bool
	}{
		{"name = \"SECRET-NAME-3e1f\"\nprotect = true\n", false},
		{"name = \"SECRET-NAME-3e1f\"\n[resources]\nmemory = \"64 TB\"\n", true},
	} {
		s := testServer(t)
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		if _, pe := s.deploy(proto.Deploy{Manifest: c.manifest}, nil, origin{}, log); pe == nil || pe.Code != proto.CodeRefused {
			t.Fatalf("%q: deployed, or %+v", c.manifest, pe)
		}
		if !strings.Contains(buf.String(), "manifest refused") {
			t.Fatalf("%q: nothing logged: %q", c.manifest, buf.String())
		}
		if got := strings.Contains(buf.String(), "SECRET-NAME-3e1f"); got != c.named {
			t.Errorf("%q: named in the log: %v, want %v: %q", c.manifest, got, c.named, buf.String())
		}
	}
	if got := logName(&manifest.Manifest{Name: "x", Protect: true}); strings.Contains(got, "x") {
		t.Errorf("logName of a protected manifest: %q", got)
	}
}

// exhausted is a key that has sealed all it may.
type exhausted struct{}

func (exhausted) Seal([]byte, []byte) ([]byte, error) { return nil, fsprotect.ErrExhausted }
func (exhausted) Open([]byte, []byte) ([]byte, error) { return nil, fsprotect.ErrTampered }

// TestProtectedKeyExhausted: once an instance's key has sealed all it
// may, a put and an output fail saying so (a retry cannot help), not
// blaming bentod's disk; the session's exit is still kept.
func TestProtectedKeyExhausted(t *testing.T) {
	s := testServer(t)
	in, _, _ := testInstance(t, s)
	st, err := kvstore.Open(filepath.Join(in.dir, "storage.log"), kvstore.Options{MaxBytes: 1 << 20, Seal: exhausted{}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	in.store = st
	h := &hostCall{in: in, args: json.RawMessage(`{"key":"k"}`), body: []byte("v")}
	if _, _, err := h.storage("storage.put"); err == nil || !strings.Contains(err.Error(), fsprotect.ErrExhausted.Error()) {
		t.Errorf("put: %v, want %v", err, fsprotect.ErrExhausted)
	}
	out, err := newOutLog(filepath.Join(in.dir, "s-1"), "s-1", exhausted{})
	if err != nil {
		t.Fatal(err)
	}
	ss := &session{id: "s-1", out: out}
	if err := in.output(ss, []byte("data")); !errors.Is(err, fsprotect.ErrExhausted) {
		t.Errorf("output: %v, want %v", err, fsprotect.ErrExhausted)
	}
	if _, err := out.append(recExit, []byte(`{"status":"ok"}`)); err != nil {
		t.Errorf("the exit: %v", err)
	}
	if _, exitAt, _, _ := out.state(); exitAt < 0 {
		t.Error("the exit is not kept")
	}
}

// TestProtectedOutLogReorder moves a protected session's records around
// within their own log: swapped, one replayed over the next, or a data
// record relabelled as a notice or the exit. Each fails to open, so a
// client never gets its output reordered, repeated or reinterpreted.
func TestProtectedOutLogReorder(t *testing.T) {
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		change func(b []byte, rec int) []byte
		bad    int // the record (0 or 1) that must fail
	}{
		{"swapped", func(b []byte, rec int) []byte {
			a, c := bytes.Clone(b[:rec]), bytes.Clone(b[rec:2*rec])
			return append(append(c, a...), b[2*rec:]...)
		}, 0},
		{"first replayed over second", func(b []byte, rec int) []byte { copy(b[rec:], b[:rec]); return b }, 1},
		{"data relabelled notice", func(b []byte, rec int) []byte { b[0] = recNotice; return b }, 0},
		{"data relabelled exit", func(b []byte, rec int) []byte { b[rec] = recExit; return b }, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := newOutLog(filepath.Join(t.TempDir(), "s-1"), "s-1", k)
			if err != nil {
				t.Fatal(err)
			}
			rec, _ := l.append(recData, []byte(`{"a":"first record"}`))
			if _, err := l.append(recData, []byte(`{"b":"2nd!! record"}`)); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(l.path)
			if err != nil || int64(len(b)) != 2*rec {
				t.Fatalf("the log: %d bytes, %v; records not of one length", len(b), err)
			}
			if err := os.WriteFile(l.path, c.change(b, int(rec)), 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := l.reader()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, _, data, err := l.record(r, int64(c.bad)*rec, true); !errors.Is(err, fsprotect.ErrTampered) {
				t.Errorf("record %d: %q %v, want ErrTampered", c.bad, data, err)
			}
		})
	}
}

// TestProtectedChildMustBeProtected: what a protected function deploys on
// its own bentod is charged to its client, whose address an unprotected
// instance's record keeps in the clear: such a deploy is refused, naming
// the item. (A draining box refuses every other deploy after that check,
// so none of them starts a runner here.)
func TestProtectedChildMustBeProtected(t *testing.T) {
	s := testServer(t)
	p := *s.policy()
	p.FSProtect = true
	s.pol.Store(&p)
	s.SetDraining(true)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct {
		manifest string
		o        origin
		want     string
	}{
		{"name = \"child\"\n", origin{owner: "203.0.113.9", depth: 1, protected: true}, "but the function deploying it has it"},
		{"name = \"child\"\nprotect = true\n", origin{owner: "203.0.113.9", depth: 1, protected: true}, "drain"},
		{"name = \"child\"\n", origin{owner: "203.0.113.9", depth: 1}, "drain"},
	} {
		_, pe := s.deploy(proto.Deploy{Manifest: c.manifest}, nil, c.o, log)
		if pe == nil || !strings.Contains(pe.Message, c.want) {
			t.Errorf("%q from %+v: %+v, want %q", c.manifest, c.o, pe, c.want)
		}
	}
}

// TestChildOrigin: what a protected instance's function deploys here
// comes from a protected origin; an unprotected one's does not.
func TestChildOrigin(t *testing.T) {
	s := testServer(t)
	in, _, _ := testInstance(t, s)
	if o := childOrigin(in); o.protected || o.depth != in.depth+1 || o.root != in.root || o.owner != in.owner {
		t.Errorf("an unprotected instance's child: %+v", o)
	}
	k, err := fsprotect.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	in.key = k
	if o := childOrigin(in); !o.protected {
		t.Errorf("a protected instance's child: %+v", o)
	}
}
