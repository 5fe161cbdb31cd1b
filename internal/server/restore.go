package server

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/kvstore"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/safelog"
)

// recordFile, in an instance's directory, holds what bentod needs to start
// the instance again after its runner stopped or bentod restarted: its
// code, manifest, token hashes and who it is charged to. A protected
// instance's manifest and code are sealed (FS Protect): only its key, in
// this bentod's memory, opens them, so a restart cannot restore it.
const recordFile = "record.json"

type record struct {
	recordHead
	Files map[string][]byte `json:"files"`
	// Sealed is a protected instance's sealedCode, sealed.
	Sealed []byte `json:"sealed,omitempty"`
}

// sealedCode is what a protected instance's record seals.
type sealedCode struct {
	Manifest string            `json:"manifest"`
	Files    map[string][]byte `json:"files"`
}

// recordHead is a record without the function's files: what a restart
// reads of every instance (the files are read when its runner starts).
type recordHead struct {
	ID       string    `json:"id"`
	Manifest string    `json:"manifest"`
	InvHash  string    `json:"inv_hash"`
	ShutHash string    `json:"shut_hash"`
	Created  time.Time `json:"created"`
	Owner    string    `json:"owner,omitempty"`
	Root     string    `json:"root,omitempty"`
	Depth    int       `json:"depth,omitempty"`
	// Protected: FS Protect; the manifest and code are in Sealed.
	Protected bool `json:"protected,omitempty"`
}

// saveRecord writes the instance's record: to a temporary file, synced,
// then renamed over the old one, so a crash leaves the old record or the
// new one.
func (in *Instance) saveRecord(text string, files map[string][]byte) error {
	root := ""
	if in.root != in.id {
		root = in.root
	}
	r := record{recordHead: recordHead{ID: in.id, Manifest: text,
		InvHash: hex.EncodeToString(in.invHash[:]), ShutHash: hex.EncodeToString(in.shutHash[:]), Created: in.created,
		Owner: in.owner, Root: root, Depth: in.depth}, Files: files}
	if in.key != nil {
		code, err := json.Marshal(sealedCode{Manifest: text, Files: files})
		if err != nil {
			return err
		}
		// A new generation for every record written, so that an older
		// record put back on disk (the code before an update) fails to
		// open: only the last one saved is this instance's code.
		gen := in.recordGen.Load() + 1
		if r.Sealed, err = in.key.Seal(code, in.recordAD(gen)); err != nil {
			return err
		}
		// Nor is its client's address kept in the clear: a protected
		// instance is never restored, so nothing needs it after bentod.
		r.Manifest, r.Files, r.Owner, r.Protected = "", nil, "", true
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := atomicfile.Write(filepath.Join(in.dir, recordFile), b, 0o600); err != nil {
			return err // the old record, of the current generation, stays
		}
		in.recordGen.Store(gen)
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(in.dir, recordFile), b, 0o600)
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
	if r.Protected != (in.key != nil) {
		return nil, errors.New("the instance record is damaged: it is not the protected (or unprotected) instance's")
	}
	if in.key != nil {
		code, err := in.key.Open(r.Sealed, in.recordAD(in.recordGen.Load()))
		if err != nil {
			return nil, fmt.Errorf("the instance record: %w", err)
		}
		var c sealedCode
		if err := json.Unmarshal(code, &c); err != nil {
			return nil, fmt.Errorf("the instance record is damaged: %w", err)
		}
		return c.Files, nil
	}
	return r.Files, nil
}

// recordAD is the associated data of a protected instance's sealed code:
// the instance and the record's generation (in memory only, one more at
// every save).
func (in *Instance) recordAD(gen uint64) []byte {
	return fsprotect.AD([]byte("bento record v1"), []byte(in.id), fsprotect.U64(int64(gen)))
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
	var recs []recordHead
	for _, e := range ents {
		dir := filepath.Join(s.instDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, recordFile))
		var rec recordHead
		switch {
		case errors.Is(err, os.ErrNotExist):
			// A deploy that never reached its client: nobody holds its
			// tokens.
			_ = os.RemoveAll(dir)
			continue
		case err != nil:
			// The disk or the descriptors failed us: the data stays for
			// the next start.
			s.log.Warn("instance record unreadable; kept for the next start", "instance", e.Name(), "err", err)
			continue
		case json.Unmarshal(b, &rec) != nil || rec.ID != e.Name():
			s.log.Warn("instance record damaged; removed", "instance", e.Name())
			_ = os.RemoveAll(dir)
			continue
		}
		recs = append(recs, rec)
	}
	// Roots first, so that their functions' instances find them.
	ordered := make([]recordHead, 0, len(recs))
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
		keep := false
		if s.restore {
			err := s.restoreInstance(rec, dir)
			if err == nil {
				restored++
				continue
			}
			var re *restoreError
			if errors.As(err, &re) {
				why, keep = "bentod restarted and could not take it back: "+re.why, re.keep
				if re.lost {
					why = re.why
				}
			}
			s.log.Warn("instance not restored", "instance", rec.ID, "err", err, "data_kept", keep)
		}
		lost++
		for _, hs := range []string{rec.InvHash, rec.ShutHash} {
			if h, ok := parseHash(hs); ok {
				s.lost[h] = "the instance ended: " + why
			}
		}
		if !keep {
			_ = os.RemoveAll(dir)
		}
	}
	if restored+lost > 0 {
		safelog.Notice(s.log, "instances of an earlier bentod", "restored", restored, "ended", lost)
	}
}

// restoreError says why an instance was not restored, in words for its
// clients, and whether its data stays on disk for a later start.
type restoreError struct {
	why  string
	keep bool
	lost bool  // why is the whole story: not "could not take it back"
	err  error // for the operator's log
}

func (e *restoreError) Error() string {
	if e.err != nil {
		return e.why + ": " + e.err.Error()
	}
	return e.why
}

// whyProtectedLost is what the clients of a protected instance hear
// after a restart of bentod.
const whyProtectedLost = "bentod restarted, and the instance had FS Protect (protect = true): its key was held only in the memory of the bentod that ended, so its stored data, output and code are unrecoverable and were deleted; deploy it again"

func (s *Server) restoreInstance(rec recordHead, dir string) error {
	if rec.Protected {
		return &restoreError{why: whyProtectedLost, lost: true}
	}
	p := s.policy()
	m, err := manifest.Parse([]byte(rec.Manifest))
	if err != nil {
		// A bentod that reads manifests differently (an upgrade, or a
		// downgrade) must not cost the user their data: it stays for a
		// start that can read it, as long as any instance may live here.
		return &restoreError{why: "its manifest no longer parses", err: err, keep: time.Since(rec.Created) < p.Max.Lifetime}
	}
	m.Resolve(p)
	if time.Since(rec.Created) >= m.Resources.Lifetime {
		return &restoreError{why: "its lifetime ended while bentod was down"}
	}
	if vs := manifest.Check(m, p); len(vs) > 0 {
		// The policy changed: the instance may not run under it, but its
		// data stays (within its lifetime) for the operator to reconsider.
		return &restoreError{why: fmt.Sprintf("the node's policy no longer allows it (%s)", vs[0].Item), keep: true}
	}
	if b := s.boxT; b.ends() {
		if !time.Now().Before(b.end) {
			return &restoreError{why: fmt.Sprintf("the box ended at %s while bentod was down; its stored data was wiped", b.end.Format(time.RFC3339))}
		}
		// A lifetime shortened to the box's end at deploy stays so.
		m.Resources.Lifetime = min(m.Resources.Lifetime, b.end.Sub(rec.Created))
	}
	invHash, ok1 := parseHash(rec.InvHash)
	shutHash, ok2 := parseHash(rec.ShutHash)
	if !ok1 || !ok2 {
		return &restoreError{why: "its record is damaged"}
	}
	o := origin{owner: rec.Owner, root: rec.Root, depth: rec.Depth}
	if o.root != "" {
		// Its root may have ended before it: the group lives on for it.
		s.mu.Lock()
		if s.roots[o.root] == nil {
			s.roots[o.root] = &root{id: o.root, owner: o.owner}
		}
		s.mu.Unlock()
	}
	adm, perr := s.admit(m, o, rec.ID)
	if perr != nil {
		// The box is fuller than it was (or smaller): the data waits for
		// a start that has room, within its lifetime.
		return &restoreError{why: perr.Message, keep: true}
	}
	in := newInstance(s, rec.ID, m, o, adm)
	in.invHash, in.shutHash, in.created = invHash, shutHash, rec.Created
	// Sessions of the old bentod are gone with it; stored data stays, and
	// is opened by run (not here: a restarted bentod serves at once).
	_ = os.RemoveAll(filepath.Join(dir, "sessions"))
	removeFunctionLog(dir)
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
