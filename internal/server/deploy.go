package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/torbento/bento/internal/fsprotect"
	"github.com/torbento/bento/internal/manifest"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/units"
)

// deploy checks and starts a new instance, charged to o.
func (s *Server) deploy(d proto.Deploy, body []byte, o origin, log *slog.Logger) (*proto.Deployed, *proto.Error) {
	p := s.policy()
	if size := int64(len(body) + len(d.Manifest)); size > p.Max.Upload {
		return nil, &proto.Error{Code: proto.CodeTooLarge, Message: fmt.Sprintf("upload of %s exceeds this node's MaxUploadSize of %s", units.FormatSize(size), units.FormatSize(p.Max.Upload))}
	}
	m, err := manifest.Parse([]byte(d.Manifest))
	if err != nil {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}
	}
	m.Resolve(p)
	if vs := manifest.Check(m, p); len(vs) > 0 {
		e := &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q asks for more than this node's policy allows (%d items)", m.Name, len(vs))}
		for _, v := range vs {
			e.Violations = append(e.Violations, proto.Violation(v))
		}
		log.Info("manifest refused", "function", logName(m), "violations", len(vs))
		return nil, e
	}
	if o.protected && !m.Protect {
		// It would be charged to the protected function's client, whose
		// address would then be in its record in the clear, with what the
		// function gives it (its code, its data).
		log.Info("manifest refused: a protected function deploys an unprotected one")
		return nil, &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q does not ask for FS Protect, but the function deploying it has it: what a protected function starts here must be protected too (add protect = true)", m.Name),
			Violations: []proto.Violation{{Item: "protect", Asked: "false", Allowed: "true, as the deploying function's"}}}
	}
	if s.Draining() {
		log.Info("deploy refused: the operator drains the box", "function", logName(m))
		return nil, errDraining
	}
	now := time.Now()
	b := s.box()
	if pe := b.refusal(now); pe != nil {
		log.Info("deploy refused: the box is ending", "function", logName(m))
		return nil, pe
	}
	if short, v := m.FitBoxEnd(b.end, now); v != nil {
		log.Info("manifest refused: it would outlast the box", "function", logName(m))
		return nil, &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("manifest of %q would outlast this box, which ends at %s", m.Name, b.end.Format(time.RFC3339)),
			Violations: []proto.Violation{proto.Violation(*v)}}
	} else if short {
		log.Info("lifetime shortened to the box's end", "function", logName(m), "lifetime", m.Resources.Lifetime)
	}
	files, err := proto.UnpackFiles(d.Files, body, manifest.ValidFileName)
	if err != nil {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}
	}
	if _, ok := files[m.Entry]; !ok {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: fmt.Sprintf("entry file %q is not in the upload", m.Entry)}
	}
	id := newID("i-", 12)
	adm, perr := s.admit(m, o, id)
	if perr != nil {
		return nil, perr
	}
	inv, invHash := newToken(invPrefix)
	shut, shutHash := newToken(shutPrefix)
	in := newInstance(s, id, m, o, adm)
	in.invHash, in.shutHash = invHash, shutHash
	fail := func(pe *proto.Error) (*proto.Deployed, *proto.Error) {
		if in.store != nil {
			in.store.Close()
		}
		_ = os.RemoveAll(in.dir)
		s.unadmit(adm)
		return nil, pe
	}
	if m.Protect {
		// FS Protect: made here, held by the instance, written nowhere.
		k, err := fsprotect.NewKey()
		if err != nil {
			log.Warn("making an FS Protect key", "err", err)
			return fail(internalError("could not make the instance's FS Protect key"))
		}
		in.key = k
	}
	if err := os.MkdirAll(in.dir, 0o700); err != nil {
		log.Warn("creating the instance's directory", "err", err)
		return fail(internalError("could not create the instance"))
	}
	if err := in.openStore(); err != nil {
		log.Warn("creating the instance's storage", "err", err)
		return fail(internalError("could not create the instance's storage"))
	}
	in.storeOpen = true // before anyone else sees the instance
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := in.startRuntime(ctx, m, files)
	if err != nil {
		var le *loadError
		if errors.As(err, &le) {
			return fail(&proto.Error{Code: proto.CodeBadRequest, Message: "function failed to load: " + le.Error()})
		}
		// The runtime's own words are for the operator: they name host
		// paths, so the client hears only what limit or failure it was.
		log.Warn("instance failed to start", "function", logName(m), "err", err)
		return fail(internalError("could not start the function: " + startFailureForClient(err)))
	}
	// Saved before the client hears of the instance: a crash from here on
	// restores it (RestoreInstances) with its tokens.
	if err := in.saveRecord(d.Manifest, files); err != nil {
		_ = rt.c.Remove()
		log.Warn("saving the instance record", "instance", in.id, "err", err)
		return fail(internalError("could not save the instance (bentod's disk?)"))
	}
	in.setRuntime(rt)
	s.launch(in)
	safelog.Notice(log, "instance started", "instance", in.id, "function", logName(m),
		"memory", units.FormatSize(m.Resources.Memory), "cpu", m.Resources.CPU, "depth", in.depth)
	res, _ := json.Marshal(m.Resources)
	return &proto.Deployed{Instance: in.id, InvocationToken: inv, ShutdownToken: shut, Resources: res}, nil
}

// logName is how bentod's log, which is kept on the operator's disk,
// names m's function: not at all when m asks for FS Protect, whose
// manifest is written nowhere in the clear (the instance id identifies
// it for the operator).
func logName(m *manifest.Manifest) string {
	if m.Protect {
		return "(not logged: FS Protect)"
	}
	return m.Name
}

func internalError(msg string) *proto.Error {
	return &proto.Error{Code: proto.CodeInternal, Message: msg}
}

// startFailureForClient is what a client may hear of a failed start: the
// limit that stopped the function while it loaded, never the runtime's
// messages (which name the operator's paths).
func startFailureForClient(err error) string {
	msg := err.Error()
	for _, limit := range []string{"memory limit exceeded", "process limit exceeded", "cpu time limit exceeded", "did not load within"} {
		if i := strings.Index(msg, limit); i >= 0 {
			return msg[i:]
		}
	}
	return "the sandbox failed to start (the operator's log says why)"
}
