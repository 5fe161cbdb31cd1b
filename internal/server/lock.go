package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir takes the data directory for this bentod alone, for as long
// as the returned file stays open. A second bentod on the same directory
// would take the first one's instances for an earlier bentod's: restore
// them, reap their containers and, failing to listen, end them.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("DataDirectory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another bentod"
			if b, _ := os.ReadFile(path); len(strings.TrimSpace(string(b))) > 0 && len(b) < 32 {
				who += " (pid " + strings.TrimSpace(string(b)) + ")"
			}
			return nil, fmt.Errorf("DataDirectory %s is in use by %s: stop it first, or give this bentod a DataDirectory of its own", dir, who)
		}
		return nil, fmt.Errorf("locking DataDirectory %s: %w", dir, err)
	}
	// Who holds it, for the message above (the lock is what counts).
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
