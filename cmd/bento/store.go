package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
)

// The local store of the user's instances: what deploy (and run, while it
// keeps an instance) recorded, so that bento ls can list them and their
// tokens are not lost with a terminal's scrollback. The tokens are
// secrets: the file is 0600 in a 0700 directory, and --no-store or
// $BENTO_NO_STORE=1 keeps bento from writing anything.

// storeEntry is one instance in the store.
type storeEntry struct {
	Server          string    `json:"server"`
	Instance        string    `json:"instance"`
	Function        string    `json:"function"`
	InvocationToken string    `json:"invocation_token"`
	ShutdownToken   string    `json:"shutdown_token"`
	DeployedAt      time.Time `json:"deployed_at"`
	EndsAt          time.Time `json:"ends_at,omitzero"`
}

type storeFile struct {
	Version   int          `json:"version"`
	Instances []storeEntry `json:"instances"`
}

// Store bounds: a file larger than this is not read (it is not one bento
// wrote), nor are more entries kept (the oldest go first).
const (
	maxStoreFile    = 8 << 20
	maxStoreEntries = 10000
)

// storePath returns where the store lives: $XDG_STATE_HOME/bento, or
// ~/.local/state/bento.
func storePath() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "bento", "instances.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return "", fmt.Errorf("no home directory to keep the store of instances in (set $HOME or $XDG_STATE_HOME, or --no-store)")
	}
	return filepath.Join(home, ".local", "state", "bento", "instances.json"), nil
}

// parseStore decodes the store file; every entry must name its server,
// instance and tokens.
func parseStore(b []byte) ([]storeEntry, error) {
	if len(b) > maxStoreFile {
		return nil, fmt.Errorf("it is %d bytes, more than a store of instances holds (%d)", len(b), maxStoreFile)
	}
	var f storeFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("it is not a store of instances: %v", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("it has version %d, this bento reads version 1", f.Version)
	}
	if len(f.Instances) > maxStoreEntries {
		return nil, fmt.Errorf("it has %d entries, more than %d", len(f.Instances), maxStoreEntries)
	}
	for i, e := range f.Instances {
		if e.Server == "" || e.Instance == "" || e.InvocationToken == "" || e.ShutdownToken == "" {
			return nil, fmt.Errorf("entry %d lacks its server, instance id or tokens", i+1)
		}
	}
	return f.Instances, nil
}

// localStore is the opened store: its path and, while it is changed, the
// lock that keeps two bentos from losing each other's entries.
type localStore struct {
	path string
	lock *os.File
}

// openStore opens the store (creating its directory, 0700), locked.
func openStore() (*localStore, error) {
	path, err := storePath()
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	return &localStore{path: path, lock: lock}, nil
}

func (s *localStore) close() { s.lock.Close() }

// read returns the store's entries (none if there is no file yet).
func (s *localStore) read() ([]storeEntry, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStoreFile+1))
	if err != nil {
		return nil, err
	}
	es, err := parseStore(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %v (move it away to start a new one)", s.path, err)
	}
	return es, nil
}

// write replaces the store's entries, atomically, 0600.
func (s *localStore) write(es []storeEntry) error {
	if len(es) > maxStoreEntries {
		es = es[len(es)-maxStoreEntries:]
	}
	b, err := json.MarshalIndent(storeFile{Version: 1, Instances: nonNil(es)}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, append(b, '\n'), 0o600)
}

// change reads the store, applies f and writes the result.
func (s *localStore) change(f func([]storeEntry) []storeEntry) error {
	es, err := s.read()
	if err != nil {
		return err
	}
	return s.write(f(es))
}

// noStore reports whether the user asked for no store: --no-store or
// $BENTO_NO_STORE set to anything but "" and "0".
func noStore(flag bool) bool {
	v := os.Getenv("BENTO_NO_STORE")
	return flag || (v != "" && v != "0")
}

// withStore runs f on the opened store, unless the user asked for none.
func (c *cli) withStore(skip bool, f func(*localStore) error) error {
	if noStore(skip) {
		return nil
	}
	s, err := openStore()
	if err != nil {
		return err
	}
	defer s.close()
	return f(s)
}

// remember records an instance; a failure is told, never fatal (the
// tokens were printed).
func (c *cli) remember(skip bool, e storeEntry) {
	err := c.withStore(skip, func(s *localStore) error {
		return s.change(func(es []storeEntry) []storeEntry {
			es = slices.DeleteFunc(es, func(x storeEntry) bool { return x.Server == e.Server && x.Instance == e.Instance })
			return append(es, e)
		})
	})
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: the instance's tokens could not be recorded in the local store (%v); keep them yourself\n", err)
	}
}

// forgetEntry removes an instance from the store; it reports whether it
// was there.
func (c *cli) forgetEntry(server, id string) (bool, error) {
	found := false
	err := c.withStore(false, func(s *localStore) error {
		return s.change(func(es []storeEntry) []storeEntry {
			return slices.DeleteFunc(es, func(x storeEntry) bool {
				hit := x.Instance == id && (server == "" || x.Server == server)
				found = found || hit
				return hit
			})
		})
	})
	return found, err
}

// lookupEntry finds an instance of the store by id (and server, if set).
func lookupEntry(server, id string) (*storeEntry, error) {
	s, err := openStore()
	if err != nil {
		return nil, err
	}
	defer s.close()
	es, err := s.read()
	if err != nil {
		return nil, err
	}
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].Instance == id && (server == "" || es[i].Server == server) {
			return &es[i], nil
		}
	}
	return nil, nil
}

// forgetToken removes the instance whose shutdown token is tok from the
// store (it has ended); a failure is told, never fatal.
func (c *cli) forgetToken(skip bool, server, tok string) {
	err := c.withStore(skip, func(s *localStore) error {
		es, err := s.read()
		if err != nil {
			return err
		}
		n := len(es)
		es = slices.DeleteFunc(es, func(x storeEntry) bool { return x.Server == server && x.ShutdownToken == tok })
		if len(es) == n {
			return nil // nothing to change: no file written
		}
		return s.write(es)
	})
	if err != nil {
		fmt.Fprintf(c.stderr, "bento: the instance could not be removed from the local store (%v); bento forget removes it\n", err)
	}
}
