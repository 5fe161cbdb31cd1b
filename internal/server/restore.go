package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
)

// recordFile, in an instance's directory, holds what bentod needs to start
// the instance again after a restart: its code, manifest and token hashes.
const recordFile = "record.json"

type record struct {
	ID       string            `json:"id"`
	Manifest string            `json:"manifest"`
	Files    map[string][]byte `json:"files"`
	InvHash  string            `json:"inv_hash"`
	ShutHash string            `json:"shut_hash"`
	Created  time.Time         `json:"created"`
}

// saveRecord writes the instance's record (atomically).
func (in *Instance) saveRecord(manifestText string) error {
	r := record{ID: in.id, Manifest: manifestText, Files: in.files,
		InvHash: hex.EncodeToString(in.invHash[:]), ShutHash: hex.EncodeToString(in.shutHash[:]), Created: in.created}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(in.dir, recordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(in.dir, recordFile))
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
// directory: with RestoreInstances 1 each instance starts again with its
// tokens and stored data; otherwise (or when that fails) it is removed and
// its tokens are remembered, so its clients hear what happened.
func (s *Server) recoverInstances() {
	ents, _ := os.ReadDir(s.instDir)
	restored, lost := 0, 0
	for _, e := range ents {
		dir := filepath.Join(s.instDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, recordFile))
		var rec record
		if err != nil || json.Unmarshal(b, &rec) != nil || rec.ID != e.Name() {
			_ = os.RemoveAll(dir)
			continue
		}
		why := "bentod restarted and this node does not restore instances (RestoreInstances 0)"
		if s.restore {
			err := s.restoreInstance(rec, dir)
			if err == nil {
				restored++
				continue
			}
			why = "bentod restarted and could not start it again: " + err.Error()
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
	if perr := s.admit(m); perr != nil {
		return fmt.Errorf("%s", perr.Message)
	}
	in := &Instance{
		id: rec.ID, m: m, srv: s, log: s.log, invHash: invHash, shutHash: shutHash, created: rec.Created,
		files: rec.Files, sessions: map[string]*session{}, byInv: map[uint64]*session{}, ended: make(chan struct{}),
		dir: dir, manifestText: rec.Manifest,
	}
	// Sessions of the old bentod are gone with it; stored data stays.
	_ = os.RemoveAll(filepath.Join(dir, "sessions"))
	in.storageUsed = dirSize(in.storageDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.start(ctx); err != nil {
		if in.c != nil {
			_ = in.c.Remove()
		}
		s.unadmit(m)
		return err
	}
	s.launch(in, invHash, shutHash)
	return nil
}

func dirSize(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// tokenError is the answer for a token no running instance has: what
// happened to it, if bentod knows.
func (s *Server) tokenError(tok string) *proto.Error {
	h := hashToken(tok)
	s.mu.Lock()
	why, ok := s.lost[h]
	s.mu.Unlock()
	if ok {
		return &proto.Error{Code: proto.CodeGone, Message: why}
	}
	return errBadToken
}
