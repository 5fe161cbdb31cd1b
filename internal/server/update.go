package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/units"
)

// updateWait bounds how long an update waits for the new code's runner.
const updateWait = 90 * time.Second

// updatedReason ends the invocations running when an update comes.
const updatedReason = "the function was updated (bento update): this invocation ran the old code; invoke again"

// pendingUpdate is new code waiting for the instance's runner to change:
// run starts it (applyUpdate) once the old runner is gone, and answers.
type pendingUpdate struct {
	m     *manifest.Manifest
	text  string
	files map[string][]byte
	done  chan *proto.Error // the answer, once
	once  sync.Once
	fail  func() // gives back what the update reserved
	end   func() // the instance may be updated again
}

// answer gives the update's outcome (nil: applied), once.
func (u *pendingUpdate) answer(pe *proto.Error) {
	u.once.Do(func() {
		if pe != nil {
			u.fail()
		}
		u.end()
		u.done <- pe
	})
}

// refuse answers a failed update; the old code stays.
func (u *pendingUpdate) refuse(pe *proto.Error) { u.answer(pe) }

func (in *Instance) updatePending() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.pending != nil
}

func (in *Instance) takeUpdate() *pendingUpdate {
	in.mu.Lock()
	defer in.mu.Unlock()
	u := in.pending
	in.pending = nil
	return u
}

// update replaces a running instance's code and manifest (proto.Update),
// with its shutdown token. The manifest is checked against the policy as
// a deploy's is, the code is compiled, the stored data must fit the new
// storage allowance, and resources that grew are admitted again: any
// refusal leaves the old code running, its invocations untouched. Then
// the old runner is stopped (its invocations end, told why) and the new
// code is loaded; if it fails to load, the old code starts again and the
// update is refused. The instance keeps its id, tokens, stored data and
// the start of its lifetime.
func (s *Server) update(u proto.Update, body []byte, log *slog.Logger) (*proto.Updated, *proto.Error) {
	if err := u.Check(); err != nil {
		return nil, badRequest(err.Error())
	}
	in := s.lookup(u.Token, true)
	if in == nil {
		if s.lookup(u.Token, false) != nil {
			return nil, badRequest("an update needs the instance's shutdown token, and this is its invocation token")
		}
		return nil, s.tokenError(u.Token)
	}
	p := s.policy()
	if size := int64(len(body) + len(u.Manifest)); size > p.Max.Upload {
		return nil, &proto.Error{Code: proto.CodeTooLarge, Message: fmt.Sprintf("upload of %s exceeds this node's MaxUploadSize of %s", units.FormatSize(size), units.FormatSize(p.Max.Upload))}
	}
	m, err := manifest.Parse([]byte(u.Manifest))
	if err != nil {
		return nil, badRequest(err.Error())
	}
	m.Resolve(p)
	if vs := manifest.Check(m, p); len(vs) > 0 {
		e := &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q asks for more than this node's policy allows (%d items); the instance keeps its old code", m.Name, len(vs))}
		for _, v := range vs {
			e.Violations = append(e.Violations, proto.Violation(v))
		}
		return nil, e
	}
	if m.Protect != in.mf().Protect {
		// The key is made with the instance: data stored in the clear
		// cannot become protected, nor sealed data plain.
		asked, was := "protect = false", "true, as deployed"
		if m.Protect {
			asked, was = "protect = true", "false, as deployed"
		}
		return nil, &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q changes FS Protect, which an update cannot; the instance keeps its old code (deploy a new instance to change it)", m.Name),
			Violations: []proto.Violation{{Item: "protect", Asked: asked, Allowed: was}}}
	}
	// The lifetime counts from the deploy, as before.
	if b := s.box(); b.ends() {
		if _, v := m.FitBoxEnd(b.end, in.created); v != nil {
			return nil, &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q would outlast this box, which ends at %s; the instance keeps its old code", m.Name, b.end.Format(time.RFC3339)),
				Violations: []proto.Violation{proto.Violation(*v)}}
		}
	}
	if end := in.created.Add(m.Resources.Lifetime); !time.Now().Before(end) {
		return nil, &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("a lifetime of %s, counted from the deploy at %s, is already over; ask for a longer one", m.Resources.Lifetime, in.created.UTC().Format(time.RFC3339))}
	}
	files, err := proto.UnpackFiles(u.Files, body, manifest.ValidFileName)
	if err != nil {
		return nil, badRequest(err.Error())
	}
	if _, ok := files[m.Entry]; !ok {
		return nil, badRequest(fmt.Sprintf("entry file %q is not in the upload", m.Entry))
	}
	// The code is compiled where it runs, in the new container, never in
	// bentod: compiling a hostile upload here would cost bentod's own
	// memory (a 1 MB bundle can take hundreds of MB to resolve). Code that
	// fails to load is refused there, and the old code starts again
	// (bento update runs bento check first, so honest mistakes are found
	// before anything is sent).
	if !in.updating.CompareAndSwap(false, true) {
		return nil, &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: another update of this instance is under way"}
	}
	release := func() { in.updating.Store(false) }
	// Resources that grew are admitted again; the admission settles on
	// the new figures once the new code runs, or goes back.
	oldMem, oldMilli := in.adm.memory, in.adm.milli
	newMilli := policy.MilliCores(m.Resources.CPU)
	if pe := s.resize(in.adm, max(oldMem, m.Resources.Memory), max(oldMilli, newMilli)); pe != nil {
		release()
		return nil, pe
	}
	pu := &pendingUpdate{m: m, text: u.Manifest, files: files, done: make(chan *proto.Error, 1),
		fail: func() { _ = s.resize(in.adm, oldMem, oldMilli) }, end: release}
	in.mu.Lock()
	var gone *proto.Error
	switch {
	case in.isEnded() || in.endReason != "":
		gone = &proto.Error{Code: proto.CodeGone, Message: "instance has ended: " + in.endReason}
	case in.exiting:
		gone = &proto.Error{Code: proto.CodeGone, Message: "instance is ending: the function called exit()"}
	case in.mf().Mode == manifest.ModeOneShot && in.invoked:
		gone = &proto.Error{Code: proto.CodeGone, Message: "a one-shot instance ends with its invocation, which has begun; deploy again"}
	case !in.storeOpen:
		gone = &proto.Error{Code: proto.CodeBusy, Message: "busy, retry later: the instance's stored data is being opened (bentod restarted)"}
	default:
		// Nothing a user stored is lost: the data must fit.
		if held := in.store.Charged(); held > m.Resources.Storage {
			gone = &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("the instance stores %s, more than the new manifest's storage allows; the instance keeps its old code and its data", units.FormatSize(held)),
				Violations: []proto.Violation{{Item: "resources.storage", Asked: units.FormatSize(m.Resources.Storage), Allowed: "at least " + units.FormatSize(held) + ", what is stored now (delete keys first, or ask for more)"}}}
		}
	}
	if gone != nil {
		in.mu.Unlock()
		pu.refuse(gone)
		return nil, <-pu.done
	}
	in.pending = pu
	rt := in.rt
	running := 0
	if rt != nil {
		for _, ss := range in.byInv {
			if ss.rt == rt {
				running++
			}
		}
	}
	in.mu.Unlock()
	select {
	case in.updateWake <- struct{}{}:
	default:
	}
	if rt != nil {
		in.stopRuntime(rt, updatedReason)
	}
	t := time.NewTimer(updateWait)
	defer t.Stop()
	select {
	case pe := <-pu.done:
		if pe != nil {
			why := pe.Message
			if m.Protect {
				// It may quote the code (a load error): not on disk.
				why = pe.Code + " (not logged: FS Protect)"
			}
			log.Info("update refused", "instance", in.id, "why", why)
			return nil, pe
		}
	case <-t.C:
		return nil, internalError(fmt.Sprintf("the new code did not start within %s; it may still replace the old code (bento logs and invoke tell)", updateWait))
	}
	safelog.Notice(log, "instance updated", "instance", in.id, "function", logName(m), "ended_sessions", running)
	res, _ := json.Marshal(m.Resources)
	return &proto.Updated{Instance: in.id, Resources: res, EndsAt: in.created.Add(m.Resources.Lifetime), Ended: running}, nil
}

// applyUpdate starts the pending update's code, in run, once the old
// runner is gone. The record is saved before anything else changes: a
// crash from then on restores the new code. It returns the new runtime,
// or nil (the update refused) for the old code to start again.
func (in *Instance) applyUpdate(u *pendingUpdate) *runtime {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-in.endReq:
			cancel()
		case <-ctx.Done():
		}
	}()
	rt, err := in.startRuntime(ctx, u.m, u.files)
	if err != nil {
		var le *loadError
		if errors.As(err, &le) {
			u.refuse(badRequest("function failed to load: " + le.Error() + "; the instance keeps its old code"))
		} else {
			in.log.Warn("the updated function failed to start", "instance", in.id, "err", err)
			u.refuse(internalError("could not start the new code: " + startFailureForClient(err) + "; the instance keeps its old code"))
		}
		return nil
	}
	if err := in.saveRecord(u.text, u.files); err != nil {
		_ = rt.c.Remove()
		in.log.Warn("saving the instance record", "instance", in.id, "err", err)
		u.refuse(internalError("could not save the new code (bentod's disk?); the instance keeps its old code"))
		return nil
	}
	old := in.mf()
	in.man.Store(u.m)
	in.budget[0].Grow(instanceShare(u.m.Resources))
	if in.store != nil {
		in.store.SetMaxBytes(u.m.Resources.Storage)
	}
	_ = in.srv.resize(in.adm, u.m.Resources.Memory, policy.MilliCores(u.m.Resources.CPU))
	if u.m.Resources.Lifetime != old.Resources.Lifetime {
		select {
		case in.lifeReset <- struct{}{}:
		default:
		}
	}
	u.answer(nil)
	return rt
}

// resize changes an admission's memory and CPU: growing within the
// aggregate ceilings (busy beyond them), shrinking always.
func (s *Server) resize(a *admission, mem, milli int64) *proto.Error {
	p := s.policy()
	s.mu.Lock()
	defer s.mu.Unlock()
	dm, dc := mem-a.memory, milli-a.milli
	if dm > 0 && s.usedMem+dm > s.totalMemory(p) {
		return &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("busy, retry later: %s more memory is needed, %s is free for functions; the instance keeps its old code", units.FormatSize(dm), units.FormatSize(max(0, s.totalMemory(p)-s.usedMem)))}
	}
	if dc > 0 && s.usedMilli+dc > policy.MilliCores(p.Aggregate.CPU) {
		return &proto.Error{Code: proto.CodeBusy, Message: fmt.Sprintf("busy, retry later: %.2f more cores are needed, %.2f are free for functions; the instance keeps its old code", float64(dc)/1000, float64(max(0, policy.MilliCores(p.Aggregate.CPU)-s.usedMilli))/1000)}
	}
	s.usedMem += dm
	s.usedMilli += dc
	a.memory, a.milli = mem, milli
	return nil
}
