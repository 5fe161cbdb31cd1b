// Package atomicfile replaces a file's contents all at once: readers see
// the old file or the new one, never a part, and a crash leaves one of the
// two. The new contents go to a temporary file in the same directory
// (created afresh, so a leftover cannot lend it a wider mode), are synced,
// renamed over the old name, and the directory is synced.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path's contents with b; a new file gets mode.
func Write(path string, b []byte, mode os.FileMode) error {
	return write(path, b, mode, os.Rename)
}

// WriteNew writes b to path, a new file of mode, all at once; if path
// exists, even if it came to exist while b was written, it is left as it
// is and the error satisfies errors.Is(err, fs.ErrExist). (The temporary
// file is linked to path, which never replaces a file; on a file system
// without hard links, path is created exclusively and written in place.)
func WriteNew(path string, b []byte, mode os.FileMode) error {
	return write(path, b, mode, func(tmp, path string) error {
		err := link(tmp, path)
		if err == nil || errors.Is(err, fs.ErrExist) {
			os.Remove(tmp)
			return err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		_, err = f.Write(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return err
		}
		return os.Remove(tmp)
	})
}

// link is os.Link (a test stands in for a file system without links).
var link = os.Link

// write writes b to a temporary file beside path, syncs it, and puts it
// in place with install.
func write(path string, b []byte, mode os.FileMode, install func(tmp, path string) error) error {
	var r [6]byte
	rand.Read(r[:])
	tmp := path + ".tmp-" + hex.EncodeToString(r[:])
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = install(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
