package v3bw

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Names in a Dir.
const (
	// LinkName is the symlink pointing at the newest file; configure tor
	// with V3BandwidthsFile <Dir.Path>/v3bw.
	LinkName = "v3bw"
	// tmpPrefix starts every temporary name Dir uses.
	tmpPrefix = "v3bw.tmp-"
	// nameLayout is the time in archive names (UTC).
	nameLayout = "20060102-150405"
	// maxSuffix bounds the numeric suffixes tried for one second.
	maxSuffix = 1000
	// tmpMaxAge is how old (by modification time) a leftover temporary
	// file must be before Prune removes it.
	tmpMaxAge = time.Hour
)

// Retention defaults.
const (
	DefaultCompressAfter = 24 * time.Hour
	DefaultDeleteAfter   = 7 * 24 * time.Hour
)

// archiveRE matches the files Dir writes: v3bw.YYYYMMDD-HHMMSS, an
// optional .N suffix (several files in one second), an optional .gz.
var archiveRE = regexp.MustCompile(`^v3bw\.([0-9]{8}-[0-9]{6})(?:\.([1-9][0-9]{0,3}))?(\.gz)?$`)

// ErrPrune is wrapped by the error Dir.Write returns when the file was
// written and linked but retention failed.
var ErrPrune = errors.New("v3bw: pruning old bandwidth files failed")

// Dir is a directory of bandwidth files: an archive of
// v3bw.YYYYMMDD-HHMMSS files (UTC), gzipped after CompressAfter and
// deleted after DeleteAfter, and the symlink v3bw naming the newest.
// Files are aged by the time in their names, not their modification
// times. Only one writer (process or goroutine) may use a directory at a
// time: concurrent Writes never overwrite each other's files, but the
// symlink could end up naming the older one.
type Dir struct {
	Path string
	// CompressAfter and DeleteAfter are ages after which a file is
	// gzipped and deleted. Zero means the default (DefaultCompressAfter,
	// DefaultDeleteAfter); a negative value disables that step. The
	// newest file and the one the symlink names are never compressed or
	// deleted.
	CompressAfter, DeleteAfter time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (d *Dir) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

// LinkPath is the path to give tor as V3BandwidthsFile.
func (d *Dir) LinkPath() string { return filepath.Join(d.Path, LinkName) }

// Write encodes a file (setting h.FileCreated to Now when zero) and
// writes it atomically as v3bw.YYYYMMDD-HHMMSS from FileCreated in UTC,
// with a ".N" suffix if that name (or its .gz) is taken: the data goes to
// a temporary file in the same directory, which is synced, hard-linked to
// the final name (which never replaces an existing file; renamed where
// hard links are unsupported) and removed, and the directory is synced.
// The file has mode 0644 so a tor running as another user can read it.
// Write then points the symlink v3bw at the file's base name (a new
// symlink renamed over the old one) and prunes. The directory is created
// (0755) if missing.
//
// path is the new file's path and is set whenever the file was written;
// if only pruning failed, the error wraps ErrPrune and the new file is
// live.
func (d *Dir) Write(h Header, relays []Relay) (path string, err error) {
	if d.Path == "" {
		return "", errors.New("v3bw: Dir.Path is empty")
	}
	if h.FileCreated.IsZero() {
		h.FileCreated = d.now()
	}
	data, err := Encode(h, relays)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		return "", fmt.Errorf("v3bw: %w", err)
	}
	path, err = d.writeArchive(h.FileCreated, data)
	if err != nil {
		return "", err
	}
	if err := d.link(filepath.Base(path)); err != nil {
		return path, err
	}
	if err := d.Prune(); err != nil {
		return path, fmt.Errorf("%w: %w", ErrPrune, err)
	}
	return path, nil
}

// writeArchive writes data to a temporary file, syncs it and gives it
// the first free archive name for t, without replacing any file.
func (d *Dir) writeArchive(t time.Time, data []byte) (string, error) {
	tmp, err := writeTemp(d.Path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp) // no-op once linked and removed below

	base := LinkName + "." + t.UTC().Format(nameLayout)
	for i := 0; i < maxSuffix; i++ {
		name := base
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		p := filepath.Join(d.Path, name)
		if _, err := os.Lstat(p + ".gz"); err == nil {
			continue // taken by an older, compressed file
		}
		// A hard link fails rather than replace an existing file, so two
		// writers never clobber each other's archive.
		err := os.Link(tmp, p)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			// No hard links here: check, then rename.
			if _, serr := os.Lstat(p); serr == nil {
				continue
			}
			if err := os.Rename(tmp, p); err != nil {
				return "", fmt.Errorf("v3bw: %w", err)
			}
		} else if err := os.Remove(tmp); err != nil {
			return "", fmt.Errorf("v3bw: %w", err)
		}
		if err := syncDir(d.Path); err != nil {
			return "", err
		}
		return p, nil
	}
	return "", fmt.Errorf("v3bw: no free name for %s in %s after %d tries", base, d.Path, maxSuffix)
}

// link points the symlink at target (a base name) atomically: a new
// symlink under a random name is renamed over the old one.
func (d *Dir) link(target string) error {
	for range 10 {
		tmp := filepath.Join(d.Path, tmpPrefix+randomHex())
		err := os.Symlink(target, tmp)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("v3bw: %w", err)
		}
		if err := os.Rename(tmp, d.LinkPath()); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("v3bw: %w", err)
		}
		return syncDir(d.Path)
	}
	return errors.New("v3bw: could not create a temporary symlink")
}

// writeTemp creates a temporary file in dir, fills it with fill, sets
// mode 0644, syncs and closes it, and returns its path. On error the file
// is removed.
func writeTemp(dir string, fill func(io.Writer) error) (path string, err error) {
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return "", fmt.Errorf("v3bw: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := fill(f); err != nil {
		return "", fmt.Errorf("v3bw: writing %s: %w", f.Name(), err)
	}
	if err := f.Chmod(0o644); err != nil {
		return "", fmt.Errorf("v3bw: %w", err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("v3bw: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("v3bw: %w", err)
	}
	return f.Name(), nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("v3bw: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("v3bw: syncing %s: %w", dir, err)
	}
	return nil
}

func randomHex() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// archive is one of our files in the directory.
type archive struct {
	name   string
	t      time.Time
	suffix int
	gz     bool
}

func (a archive) newerThan(b archive) bool {
	if !a.t.Equal(b.t) {
		return a.t.After(b.t)
	}
	return a.suffix > b.suffix
}

func parseArchive(name string) (archive, bool) {
	m := archiveRE.FindStringSubmatch(name)
	if m == nil {
		return archive{}, false
	}
	t, err := time.ParseInLocation(nameLayout, m[1], time.UTC)
	if err != nil {
		return archive{}, false
	}
	a := archive{name: name, t: t, gz: m[3] != ""}
	if m[2] != "" {
		a.suffix, _ = strconv.Atoi(m[2])
	}
	return a, true
}

// Prune applies retention: our regular files older than DeleteAfter are
// deleted, uncompressed ones older than CompressAfter are gzipped (the
// .gz is written atomically, then the original removed), temporary files
// left by a crash are removed after an hour. Ages come from the names
// (temporary files: modification time) against Now. It never touches the
// newest uncompressed file, the file the symlink names, the symlink
// itself, anything that is not a regular file, or any name it did not
// create. It keeps going after an error and returns all of them joined.
func (d *Dir) Prune() error {
	compressAfter, deleteAfter := d.CompressAfter, d.DeleteAfter
	if compressAfter == 0 {
		compressAfter = DefaultCompressAfter
	}
	if deleteAfter == 0 {
		deleteAfter = DefaultDeleteAfter
	}
	now := d.now()

	entries, err := os.ReadDir(d.Path)
	if err != nil {
		return fmt.Errorf("v3bw: %w", err)
	}
	protected := map[string]bool{}
	if target, err := os.Readlink(d.LinkPath()); err == nil {
		protected[filepath.Base(target)] = true
	}
	var archives []archive
	newest := -1
	var errs []error
	for _, e := range entries {
		name := e.Name()
		typ := e.Type()
		if strings.HasPrefix(name, tmpPrefix) && (typ.IsRegular() || typ&fs.ModeSymlink != 0) {
			// A leftover temporary file or symlink (removing a symlink
			// does not touch its target).
			info, err := e.Info()
			if err == nil && now.Sub(info.ModTime()) > tmpMaxAge {
				if err := os.Remove(filepath.Join(d.Path, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
			}
			continue
		}
		if !typ.IsRegular() {
			continue
		}
		a, ok := parseArchive(name)
		if !ok {
			continue
		}
		archives = append(archives, a)
		if !a.gz && (newest < 0 || a.newerThan(archives[newest])) {
			newest = len(archives) - 1
		}
	}
	if newest >= 0 {
		protected[archives[newest].name] = true
	}

	for _, a := range archives {
		if protected[a.name] {
			continue
		}
		age := now.Sub(a.t)
		p := filepath.Join(d.Path, a.name)
		switch {
		case deleteAfter > 0 && age > deleteAfter:
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("v3bw: %w", err))
			}
		case !a.gz && compressAfter > 0 && age > compressAfter:
			if err := d.compress(a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		if err := syncDir(d.Path); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	return syncDir(d.Path)
}

// compress writes a.name+".gz" atomically and removes a.name.
func (d *Dir) compress(a archive) error {
	p := filepath.Join(d.Path, a.name)
	before, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("v3bw: %w", err)
	}
	if !before.Mode().IsRegular() {
		return nil
	}
	in, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("v3bw: %w", err)
	}
	defer in.Close()
	// Refuse if the name was swapped for something else (e.g. a symlink)
	// between Lstat and Open.
	if after, err := in.Stat(); err != nil || !os.SameFile(before, after) {
		return fmt.Errorf("v3bw: %s changed while compressing it", p)
	}
	tmp, err := writeTemp(d.Path, func(w io.Writer) error {
		zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
		if err != nil {
			return err
		}
		zw.Name = a.name
		zw.ModTime = a.t
		if _, err := io.Copy(zw, in); err != nil {
			return err
		}
		return zw.Close()
	})
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p+".gz"); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("v3bw: %w", err)
	}
	if err := syncDir(d.Path); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("v3bw: %w", err)
	}
	return nil
}

// ReadFile reads and strictly decodes a bandwidth file, plain or gzipped
// (recognised by its content, not its name). It follows symlinks, so it
// can read Dir.LinkPath. Files, or decompressed contents, larger than
// MaxFileSize are refused with an error wrapping ErrTooLarge.
func ReadFile(path string) (*File, error) {
	b, err := readBounded(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	f, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ReadFileLenient is ReadFile with DecodeLenient.
func ReadFileLenient(path string) (*File, []*LineError, error) {
	b, err := readBounded(path, MaxFileSize)
	if err != nil {
		return nil, nil, err
	}
	f, warnings, err := DecodeLenient(b)
	if err != nil {
		return nil, warnings, fmt.Errorf("%s: %w", path, err)
	}
	return f, warnings, nil
}

// readBounded reads path, gunzipping it if it starts with the gzip magic,
// and refuses more than limit bytes (after decompression).
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("v3bw: %w", err)
	}
	defer f.Close()
	var magic [2]byte
	n, err := io.ReadFull(f, magic[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("v3bw: reading %s: %w", path, err)
	}
	r := io.MultiReader(bytes.NewReader(magic[:n]), f)
	isGzip := n == 2 && magic[0] == 0x1f && magic[1] == 0x8b
	if info, err := f.Stat(); err == nil && info.Mode().IsRegular() && info.Size() > limit && !isGzip {
		return nil, fmt.Errorf("%w: %s is %d bytes", ErrTooLarge, path, info.Size())
	}
	if isGzip {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("v3bw: %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("v3bw: reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s", ErrTooLarge, path)
	}
	return b, nil
}
