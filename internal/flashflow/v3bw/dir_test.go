package v3bw

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeClock is a settable clock for Dir.Now.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func sampleRelays(at time.Time) []Relay {
	return []Relay{
		{NodeID: strings.Repeat("A", 40), Nick: "a", Bandwidth: 1_234_567, MeasuredAt: at.Add(-10 * time.Minute)},
		{NodeID: strings.Repeat("B", 40), Bandwidth: 7_654_321, Advertised: 5_000_000, MeasuredAt: at.Add(-time.Hour)},
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func linkTarget(t *testing.T, d *Dir) string {
	t.Helper()
	target, err := os.Readlink(d.LinkPath())
	if err != nil {
		t.Fatal(err)
	}
	return target
}

func TestDirWrite(t *testing.T) {
	clock := &fakeClock{time.Date(2024, 3, 5, 7, 8, 9, 500_000_000, time.UTC)}
	d := &Dir{Path: filepath.Join(t.TempDir(), "bw"), Now: clock.Now}

	p1, err := d.Write(Header{SoftwareVersion: "1"}, sampleRelays(clock.t))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(d.Path, "v3bw.20240305-070809"); p1 != want {
		t.Fatalf("path %q, want %q", p1, want)
	}
	info, err := os.Lstat(p1)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Mode().IsRegular() || info.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want a regular file 0644", info.Mode())
	}
	if got := linkTarget(t, d); got != "v3bw.20240305-070809" {
		t.Errorf("symlink -> %q, want the base name", got)
	}
	f, err := ReadFile(d.LinkPath())
	if err != nil {
		t.Fatal(err)
	}
	if f.Header["file_created"] != "2024-03-05T07:08:09" || len(f.Relays) != 2 {
		t.Errorf("read back header %v, %d relays", f.Header, len(f.Relays))
	}
	if !f.Timestamp.Equal(clock.t.Add(-10 * time.Minute).Truncate(time.Second)) {
		t.Errorf("Timestamp %v", f.Timestamp)
	}

	// Same second: a suffix, and the link moves to the new file.
	p2, err := d.Write(Header{}, sampleRelays(clock.t))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p2) != "v3bw.20240305-070809.1" || linkTarget(t, d) != "v3bw.20240305-070809.1" {
		t.Errorf("second write %q, link %q", p2, linkTarget(t, d))
	}

	// An hour later: a new name; the link follows.
	clock.Advance(time.Hour)
	relays := sampleRelays(clock.t)
	relays[0].Bandwidth = 99_000
	p3, err := d.Write(Header{}, relays)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p3) != "v3bw.20240305-080809" || linkTarget(t, d) != "v3bw.20240305-080809" {
		t.Errorf("third write %q, link %q", p3, linkTarget(t, d))
	}
	f, err = ReadFile(d.LinkPath())
	if err != nil {
		t.Fatal(err)
	}
	if f.Relays[0].BW != 99 {
		t.Errorf("link reads bw=%d, want the newest file's 99", f.Relays[0].BW)
	}

	want := []string{"v3bw", "v3bw.20240305-070809", "v3bw.20240305-070809.1", "v3bw.20240305-080809"}
	if got := listDir(t, d.Path); !slices.Equal(got, want) {
		t.Errorf("directory holds %v, want %v (no temporary files)", got, want)
	}

	// Encode errors write nothing.
	if _, err := d.Write(Header{}, nil); !errors.Is(err, ErrNoResults) {
		t.Errorf("Write without relays: %v", err)
	}
	if got := listDir(t, d.Path); !slices.Equal(got, want) {
		t.Errorf("failed write left %v", got)
	}
	// Explicit FileCreated names the file.
	p4, err := d.Write(Header{FileCreated: clock.t.Add(time.Minute)}, sampleRelays(clock.t))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p4) != "v3bw.20240305-080909" {
		t.Errorf("explicit FileCreated gave %q", p4)
	}
	if _, err := (&Dir{}).Write(Header{}, sampleRelays(clock.t)); err == nil {
		t.Error("Write with empty Path succeeded")
	}
}

func TestDirWriteSkipsCompressedName(t *testing.T) {
	clock := &fakeClock{time.Date(2024, 3, 5, 7, 8, 9, 0, time.UTC)}
	d := &Dir{Path: t.TempDir(), Now: clock.Now}
	if err := os.WriteFile(filepath.Join(d.Path, "v3bw.20240305-070809.gz"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := d.Write(Header{}, sampleRelays(clock.t))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "v3bw.20240305-070809.1" {
		t.Errorf("got %q, want the .1 name", p)
	}
}

func TestDirRotation(t *testing.T) {
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{start}
	d := &Dir{Path: t.TempDir(), Now: clock.Now}
	var last string
	for clock.t.Before(start.Add(9 * 24 * time.Hour)) {
		p, err := d.Write(Header{}, sampleRelays(clock.t))
		if err != nil {
			t.Fatal(err)
		}
		last = filepath.Base(p)
		clock.Advance(6 * time.Hour)
	}
	now := clock.t.Add(-6 * time.Hour) // time of the last write
	var plain, gz int
	for _, name := range listDir(t, d.Path) {
		if name == LinkName {
			continue
		}
		a, ok := parseArchive(name)
		if !ok {
			t.Errorf("unexpected file %q", name)
			continue
		}
		age := now.Sub(a.t)
		switch {
		case age > DefaultDeleteAfter:
			t.Errorf("%s is %v old, past DeleteAfter", name, age)
		case a.gz && age <= DefaultCompressAfter:
			t.Errorf("%s compressed at age %v", name, age)
		case !a.gz && age > DefaultCompressAfter:
			t.Errorf("%s not compressed at age %v", name, age)
		}
		if a.gz {
			gz++
		} else {
			plain++
		}
	}
	// Ages 0, 6, 12, 18, 24 h are plain; 30 h .. 168 h compressed.
	if plain != 5 || gz != 24 {
		t.Errorf("%d plain, %d gz files, want 5 and 24", plain, gz)
	}
	if linkTarget(t, d) != last {
		t.Errorf("link -> %q, want %q", linkTarget(t, d), last)
	}
}

func TestDirPrune(t *testing.T) {
	// Real wall-clock base: leftover temporary files are aged by mtime.
	now := time.Now().UTC().Truncate(time.Second)
	dir := t.TempDir()
	d := &Dir{Path: dir, Now: func() time.Time { return now }}
	name := func(age time.Duration) string { return "v3bw." + now.Add(-age).Format(nameLayout) }
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	newest := name(time.Hour)
	keepPlain := name(23 * time.Hour)
	compress1 := name(25 * time.Hour)
	compress2 := name(6*24*time.Hour) + ".7"
	deletePlain := name(8 * 24 * time.Hour)
	deleteGz := name(9*24*time.Hour) + ".gz"
	keepGz := name(2*24*time.Hour) + ".gz"
	linked := name(30 * 24 * time.Hour) // the link's target is kept whatever its age
	for _, n := range []string{newest, keepPlain, compress1, compress2, deletePlain, deleteGz, keepGz, linked} {
		write(n, "content of "+n)
	}
	if err := os.Symlink(linked, filepath.Join(dir, LinkName)); err != nil {
		t.Fatal(err)
	}

	// Foreign entries, some looking a lot like ours: all left alone.
	outside := filepath.Join(t.TempDir(), "target.txt")
	if err := os.WriteFile(outside, []byte("foreign"), 0o644); err != nil {
		t.Fatal(err)
	}
	foreign := []string{
		"README", "v3bw.bak", name(10*24*time.Hour) + ".old", "x" + name(10*24*time.Hour),
		"v3bw.2020-01-01-00-00-00", "v3bw.20201301-000000", "v3bw.20200101-000000.gz.tmp",
		"v3bw.20200101-000000.0", "v3bw.20200101-000000.12345",
	}
	for _, n := range foreign {
		write(n, "foreign")
	}
	foreignDir := name(20 * 24 * time.Hour)
	if err := os.Mkdir(filepath.Join(dir, foreignDir), 0o755); err != nil {
		t.Fatal(err)
	}
	foreignLink := name(21 * 24 * time.Hour)
	if err := os.Symlink(outside, filepath.Join(dir, foreignLink)); err != nil {
		t.Fatal(err)
	}
	foreignLink2 := name(22*24*time.Hour) + ".gz"
	if err := os.Symlink(outside, filepath.Join(dir, foreignLink2)); err != nil {
		t.Fatal(err)
	}
	// Temporary leftovers: an old one goes, a fresh one stays.
	write("v3bw.tmp-old", "x")
	if err := os.Chtimes(filepath.Join(dir, "v3bw.tmp-old"), now.Add(-2*time.Hour), now.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	write("v3bw.tmp-fresh", "x")

	if err := d.Prune(); err != nil {
		t.Fatal(err)
	}

	want := append([]string{
		LinkName, newest, keepPlain, compress1 + ".gz", compress2 + ".gz", keepGz, linked,
		foreignDir, foreignLink, foreignLink2, "v3bw.tmp-fresh",
	}, foreign...)
	slices.Sort(want)
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Errorf("after Prune:\n got %v\nwant %v", got, want)
	}
	for _, n := range []string{compress1, compress2} {
		zf, err := os.Open(filepath.Join(dir, n+".gz"))
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(zf)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(zr)
		zf.Close()
		if err != nil || string(b) != "content of "+n || zr.Name != n {
			t.Errorf("%s.gz holds %q (name %q), %v", n, b, zr.Name, err)
		}
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "foreign" {
		t.Errorf("symlink target outside changed: %q %v", b, err)
	}
	if linkTarget(t, d) != linked {
		t.Error("Prune changed the symlink")
	}

	// Pruning again changes nothing.
	if err := d.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Errorf("second Prune changed the directory: %v", got)
	}
}

func TestDirPruneKeepsGoing(t *testing.T) {
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	d := &Dir{Path: dir, Now: func() time.Time { return now }}
	name := func(age time.Duration) string { return "v3bw." + now.Add(-age).Format(nameLayout) }
	blocked, other, newest := name(48*time.Hour), name(50*time.Hour), name(time.Hour)
	for _, n := range []string{blocked, other, newest} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A non-empty directory where blocked's .gz should go makes its
	// compression fail.
	if err := os.MkdirAll(filepath.Join(dir, blocked+".gz", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := d.Prune()
	if err == nil || !strings.Contains(err.Error(), blocked) {
		t.Fatalf("Prune error = %v, want one naming %s", err, blocked)
	}
	got := listDir(t, dir)
	want := []string{blocked, blocked + ".gz", other + ".gz", newest}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("after failed Prune: %v, want %v", got, want)
	}

	// Write reports it wrapped in ErrPrune, with the new file live.
	relays := sampleRelays(now)
	p, err := d.Write(Header{}, relays)
	if !errors.Is(err, ErrPrune) || p == "" {
		t.Fatalf("Write = %q, %v; want a path and ErrPrune", p, err)
	}
	if linkTarget(t, d) != filepath.Base(p) {
		t.Error("link not updated")
	}
}

func TestDirPruneDisabled(t *testing.T) {
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	old := "v3bw." + now.Add(-30*24*time.Hour).Format(nameLayout)
	newest := "v3bw." + now.Format(nameLayout)
	for _, n := range []string{old, newest} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := &Dir{Path: dir, CompressAfter: -1, DeleteAfter: -1, Now: func() time.Time { return now }}
	if err := d.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{old, newest}) {
		t.Errorf("disabled retention changed %v", got)
	}
	d.DeleteAfter = 0 // default: 7 days
	if err := d.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{newest}) {
		t.Errorf("got %v, want only the newest", got)
	}
	d.Path = filepath.Join(dir, "missing")
	if err := d.Prune(); err == nil {
		t.Error("Prune of a missing directory succeeded")
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	golden := readTestdata(t, "golden.v3bw")
	want, err := Decode(golden)
	if err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(golden)
	zw.Close()
	gzPath := filepath.Join(dir, "golden.v3bw.gz")
	if err := os.WriteFile(gzPath, zb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join("testdata", "golden.v3bw"), gzPath} {
		f, err := ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if len(f.Relays) != len(want.Relays) || !f.Timestamp.Equal(want.Timestamp) {
			t.Errorf("%s: %d relays at %v", p, len(f.Relays), f.Timestamp)
		}
	}

	// Errors carry the path; lenient reading reports warnings.
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("1\nbw=x node_id=$"+strings.Repeat("A", 40)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("ReadFile(bad) = %v", err)
	}
	if f, warnings, err := ReadFileLenient(bad); err != nil || len(warnings) != 1 || len(f.Relays) != 0 {
		t.Errorf("ReadFileLenient(bad) = %v, %v", warnings, err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if _, err := ReadFile(empty); err == nil {
		t.Error("empty file accepted")
	}
	corrupt := filepath.Join(dir, "corrupt.gz")
	os.WriteFile(corrupt, zb.Bytes()[:len(zb.Bytes())/2], 0o644)
	if _, err := ReadFile(corrupt); err == nil {
		t.Error("truncated gzip accepted")
	}
}

func TestReadFileTooLarge(t *testing.T) {
	dir := t.TempDir()
	// A gzip bomb: small on disk, more than the limit inflated. The
	// limit is lowered to keep the test fast; ReadFile uses MaxFileSize
	// through the same code.
	const limit = 1 << 20
	bomb := filepath.Join(dir, "bomb.gz")
	var zb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zb, gzip.BestSpeed)
	zw.Write([]byte("1700000000\n"))
	zw.Write(make([]byte, limit))
	zw.Close()
	if err := os.WriteFile(bomb, zb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if zb.Len() > limit/100 {
		t.Fatalf("bomb is %d bytes compressed", zb.Len())
	}
	if _, err := readBounded(bomb, limit); !errors.Is(err, ErrTooLarge) {
		t.Errorf("gzip bomb: %v, want ErrTooLarge", err)
	}
	if b, err := readBounded(bomb, int64(limit+len("1700000000\n"))); err != nil || len(b) != limit+11 {
		t.Errorf("gzip at the limit: %d bytes, %v", len(b), err)
	}
	// A plain file over the limit, refused from its size; a sparse file
	// keeps this cheap with the real MaxFileSize.
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("big file: %v, want ErrTooLarge", err)
	}
	// The limit passed is the one applied.
	if _, err := readBounded(big, 1000); !errors.Is(err, ErrTooLarge) {
		t.Errorf("big file, small limit: %v", err)
	}
}
