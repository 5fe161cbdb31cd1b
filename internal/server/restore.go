package server

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/safelog"
)

// recordFile, in an instance's directory, holds what bentod needs to start
// the instance again after its runner stopped or bentod restarted: its
// code, manifest, token hashes and who it is charged to.
const recordFile = "record.json"

type record struct {
	ID       string            `json:"id"`
	Manifest string            `json:"manifest"`
	Files    map[string][]byte `json:"files"`
	InvHash  string            `json:"inv_hash"`
	ShutHash string            `json:"shut_hash"`
	Created  time.Time         `json:"created"`
	Owner    string            `json:"owner,omitempty"`
	Root     string            `json:"root,omitempty"`
	Depth    int               `json:"depth,omitempty"`
}

// saveRecord writes the instance's record: to a temporary file, synced,
// then renamed over the old one, so a crash leaves the old record or the
// new one.
func (in *Instance) saveRecord(files map[string][]byte) error {
	root := ""
	if in.root != in.id {
		root = in.root
	}
	r := record{ID: in.id, Manifest: in.manifestText, Files: files,
		InvHash: hex.EncodeToString(in.invHash[:]), ShutHash: hex.EncodeToString(in.shutHash[:]), Created: in.created,
		Owner: in.owner, Root: root, Depth: in.depth}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(in.dir, recordFile), b)
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadFiles reads the function's files back from its record, for a new
// runtime (they are not kept in memory between starts).
func (in *Instance) loadFiles() (map[string][]byte, error) {
	b, err := os.ReadFile(filepath.Join(in.dir, recordFile))
	if err != nil {
		return nil, fmt.Errorf("reading the instance record: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("the instance record is damaged: %w", err)
	}
	return r.Files, nil
}

func parseHash(s string) (tokenHash, bool) {
	var h tokenHash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, false
	}
	copy(h[:], b)
	return h, true
}

// recoverInstances handles what an earlier bentod left in the instance
// directory. With RestoreInstances 1 (the default) each instance is taken
// back at once with its tokens, owner, root and stored data: its admission
// is reserved before any new client is served, and its runner starts in
// the background once Recover has reaped the earlier containers (an
// invocation meanwhile waits for it). Otherwise, or when the instance can
// no longer be admitted, it is removed and its tokens remembered, so its
// clients hear what happened.
func (s *Server) recoverInstances() {
	ents, _ := os.ReadDir(s.instDir)
	var recs []record
	for _, e := range ents {
		dir := filepath.Join(s.instDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, recordFile))
		var rec record
		if err != nil || json.Unmarshal(b, &rec) != nil || rec.ID != e.Name() {
			// A deploy that never reached its client: nobody holds its tokens.
			_ = os.RemoveAll(dir)
			continue
		}
		recs = append(recs, rec)
	}
	// Roots first, so that their functions' instances find them.
	ordered := make([]record, 0, len(recs))
	for _, pass := range []bool{true, false} {
		for _, r := range recs {
			if (r.Root == "") == pass {
				ordered = append(ordered, r)
			}
		}
	}
	restored, lost := 0, 0
	for _, rec := range ordered {
		dir := filepath.Join(s.instDir, rec.ID)
		why := "bentod restarted and this node does not restore instances (RestoreInstances 0)"
		if s.restore {
			err := s.restoreInstance(rec, dir)
			if err == nil {
				restored++
				continue
			}
			why = "bentod restarted and could not take it back: " + err.Error()
			s.log.Warn("instance not restored", "instance", rec.ID, "err", err)
		}
		lost++
		for _, hs := range []string{rec.InvHash, rec.ShutHash} {
			if h, ok := parseHash(hs); ok {
				s.lost[h] = "the instance ended: " + why
			}
		}
		_ = os.RemoveAll(dir)
	}
	if restored+lost > 0 {
		safelog.Notice(s.log, "instances of an earlier bentod", "restored", restored, "ended", lost)
	}
}

func (s *Server) restoreInstance(rec record, dir string) error {
	p := s.policy()
	m, err := manifest.Parse([]byte(rec.Manifest))
	if err != nil {
		return err
	}
	m.Resolve(p)
	if vs := manifest.Check(m, p); len(vs) > 0 {
		return fmt.Errorf("the node's policy no longer allows it (%s)", vs[0].Item)
	}
	if time.Since(rec.Created) >= m.Resources.Lifetime {
		return fmt.Errorf("its lifetime ended while bentod was down")
	}
	invHash, ok1 := parseHash(rec.InvHash)
	shutHash, ok2 := parseHash(rec.ShutHash)
	if !ok1 || !ok2 {
		return fmt.Errorf("damaged record")
	}
	o := origin{owner: rec.Owner, root: rec.Root, depth: rec.Depth}
	if o.root != "" {
		// Its root may have ended before it: the group lives on for it.
		s.mu.Lock()
		if s.roots[o.root] == nil {
			s.roots[o.root] = &root{id: o.root}
		}
		s.mu.Unlock()
	}
	adm, perr := s.admit(m, o, rec.ID)
	if perr != nil {
		return fmt.Errorf("%s", perr.Message)
	}
	in := newInstance(s, rec.ID, m, rec.Manifest, o, adm)
	in.invHash, in.shutHash, in.created = invHash, shutHash, rec.Created
	// Sessions of the old bentod are gone with it; stored data stays.
	_ = os.RemoveAll(filepath.Join(dir, "sessions"))
	if err := migrateStorage(dir, m.Resources.Storage); err != nil {
		s.unadmit(adm)
		return fmt.Errorf("its stored data could not be read: %w", err)
	}
	if err := in.openStore(); err != nil {
		s.unadmit(adm)
		return fmt.Errorf("its stored data could not be read: %w", err)
	}
	s.launch(in)
	return nil
}

// migrateStorage moves data stored by bentod 0.1 (one file per key, named
// by the key in hex, in storage/) into the instance's storage log.
func migrateStorage(dir string, limit int64) error {
	old := filepath.Join(dir, "storage")
	ents, err := os.ReadDir(old)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := kvstore.Open(filepath.Join(dir, "storage.log"), kvstore.Options{MaxBytes: max(limit, 1<<30)})
	if err != nil {
		return err
	}
	defer st.Close()
	for _, e := range ents {
		k, err := hex.DecodeString(e.Name())
		if err != nil {
			continue
		}
		v, err := os.ReadFile(filepath.Join(old, e.Name()))
		if err != nil {
			return err
		}
		if err := st.Put(string(k), v); err != nil {
			return err
		}
	}
	return os.RemoveAll(old)
}
