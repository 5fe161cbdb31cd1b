// Package atomicfile replaces a file's contents all at once: readers see
// the old file or the new one, never a part, and a crash leaves one of the
// two. The new contents go to a temporary file in the same directory
// (created afresh, so a leftover cannot lend it a wider mode), are synced,
// renamed over the old name, and the directory is synced.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
)

// Write replaces path's contents with b; a new file gets mode.
func Write(path string, b []byte, mode os.FileMode) error {
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
		err = os.Rename(tmp, path)
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
