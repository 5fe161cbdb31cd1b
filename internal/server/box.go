package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/boxdir"
	"github.com/torbento/bento/internal/policy"
	"github.com/torbento/bento/internal/proto"
	"github.com/torbento/bento/internal/safelog"
)

// A box may end (BoxEndsAt, BoxLifetime): a dust mote announces when it
// goes. From its drain point it refuses deploys and tells every attached
// client and every new session when the end comes; at the end it shuts
// every instance down, wipes their stored data, and answers their tokens
// with the reason for as long as it runs.

// boxStartFile keeps the time of bentod's first start with BoxLifetime,
// from which the end is counted: a restart does not push the end back,
// and a new BoxLifetime (SIGHUP) moves it as the operator expects.
const boxStartFile = "box-started"

// boxTimes are the box's end and drain point; zero when it has no end.
type boxTimes struct {
	end, drain time.Time
}

func (b boxTimes) ends() bool { return !b.end.IsZero() }

// resolveBoxEnd works out the box's end from the policy: BoxEndsAt as
// given, BoxLifetime from the first start (kept in the data directory;
// forgotten when BoxLifetime goes).
func resolveBoxEnd(p *policy.Policy, now time.Time) (boxTimes, error) {
	path := filepath.Join(p.DataDirectory, boxStartFile)
	var end time.Time
	switch {
	case p.Box.Lifetime > 0:
		var start time.Time
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			if start, err = time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err != nil {
				return boxTimes{}, fmt.Errorf("%s is damaged (%v): it holds bentod's first start, from which BoxLifetime counts; delete it to count from now", path, err)
			}
		case errors.Is(err, os.ErrNotExist):
			start = now.UTC().Truncate(time.Second)
			if err := atomicfile.Write(path, []byte(start.Format(time.RFC3339)+"\n"), 0o600); err != nil {
				return boxTimes{}, fmt.Errorf("keeping the box's start: %w", err)
			}
		default:
			return boxTimes{}, fmt.Errorf("reading the box's start: %w", err)
		}
		end = start.Add(p.Box.Lifetime)
	default:
		_ = os.Remove(path)
		if p.Box.EndsAt.IsZero() {
			return boxTimes{}, nil
		}
		end = p.Box.EndsAt
	}
	return boxTimes{end: end, drain: end.Add(-p.Box.Drain)}, nil
}

// box returns the box's end and drain point.
func (s *Server) box() boxTimes {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.boxT
}

// setBox takes a new end (start, SIGHUP) and wakes the box's clock.
func (s *Server) setBox(b boxTimes) {
	s.mu.Lock()
	s.boxT = b
	s.mu.Unlock()
	select {
	case s.boxWake <- struct{}{}:
	default:
	}
}

// boxRefusal is the answer to a deploy the box's end forbids, or nil.
func (b boxTimes) refusal(now time.Time) *proto.Error {
	switch {
	case !b.ends() || now.Before(b.drain):
		return nil
	case !now.Before(b.end):
		return &proto.Error{Code: proto.CodeGone, Message: fmt.Sprintf("this box ended at %s: choose another box (bento boxes)", b.end.Format(time.RFC3339))}
	}
	return &proto.Error{Code: proto.CodeRefused, Message: fmt.Sprintf("this box ends at %s and takes no new functions after %s (its drain period): choose another box (bento boxes)",
		b.end.Format(time.RFC3339), b.drain.Format(time.RFC3339))}
}

// boxNotice is what attached clients are told in the drain period.
func (b boxTimes) notice() proto.Notice {
	return proto.Notice{Kind: proto.NoticeBoxEnding, EndsAt: b.end,
		Message: fmt.Sprintf("this box ends at %s: every instance on it is shut down then and its stored data wiped; fetch what you need before", b.end.Format(time.RFC3339))}
}

// boxClock tells sessions at the drain point and ends every instance at
// the end, following changes of the end (SIGHUP) for as long as bentod
// runs: a box revived by a later end works again, and an end moved
// earlier still ends what runs. It wakes at least once a minute, so a
// wall clock that jumps (a suspended VM) is caught up with.
func (s *Server) boxClock() {
	defer s.recoverPanic("the box clock")
	var told, ended time.Time // the ends whose drain and end were handled
	if b := s.box(); b.ends() && !time.Now().Before(b.end) {
		s.log.Warn("the box's end is already past: it takes no functions, and anything restored is ended and wiped; set a later BoxEndsAt (or BoxLifetime) to use it", "ends_at", b.end.Format(time.RFC3339))
	}
	for {
		b := s.box()
		wait := time.Minute
		if b.ends() {
			now := time.Now()
			switch {
			case !now.Before(b.end):
				if !ended.Equal(b.end) || s.anyRunning() {
					ended = b.end
					s.endBox(b)
				}
			case !now.Before(b.drain):
				if !told.Equal(b.end) {
					told = b.end
					safelog.Notice(s.log, "the box is draining: no new functions; attached clients are told when it ends", "ends_at", b.end.Format(time.RFC3339))
					s.noticeAll(b.notice())
				}
				wait = min(wait, time.Until(b.end))
			default:
				wait = min(wait, time.Until(b.drain))
			}
		}
		select {
		case <-s.closed:
			return
		case <-s.boxWake:
		case <-time.After(max(wait, 10*time.Millisecond)):
		}
	}
}

// anyRunning reports whether some instance has not ended.
func (s *Server) anyRunning() bool {
	for _, in := range s.liveInstances() {
		if !in.isEnded() {
			return true
		}
	}
	return false
}

// noticeAll tells every live session.
func (s *Server) noticeAll(n proto.Notice) {
	for _, in := range s.liveInstances() {
		in.noticeSessions(n)
	}
}

// endBox shuts every instance down for good: their data is wiped, and
// their tokens answer with the reason from then on.
func (s *Server) endBox(b boxTimes) {
	var all []*Instance
	for _, in := range s.liveInstances() {
		if !in.isEnded() {
			all = append(all, in)
		}
	}
	safelog.Notice(s.log, "the box has ended: shutting every instance down", "instances", len(all))
	for _, in := range all {
		s.endBoxInstance(in, b)
	}
	for _, in := range all {
		<-in.ended
	}
	s.wipeUnclaimed()
}

// endBoxInstance ends one instance because the box ended: its data goes,
// and its tokens answer with the reason once it is forgotten.
func (s *Server) endBoxInstance(in *Instance, b boxTimes) {
	why := fmt.Sprintf("the box ended at %s (its operator's BoxEndsAt/BoxLifetime); its instances were shut down and their stored data wiped", b.end.Format(time.RFC3339))
	s.mu.Lock()
	s.lost[in.invHash] = why
	s.lost[in.shutHash] = why
	s.mu.Unlock()
	in.mu.Lock()
	in.keepData = false
	in.mu.Unlock()
	in.end(why)
}

// wipeUnclaimed removes the data of instances a restart kept on disk
// without taking them back (no room, say): at the box's end nothing a
// user stored stays behind.
func (s *Server) wipeUnclaimed() {
	s.mu.Lock()
	live := map[string]bool{}
	for id := range s.instances {
		live[id] = true
	}
	s.mu.Unlock()
	ents, _ := os.ReadDir(s.instDir)
	for _, e := range ents {
		if !live[e.Name()] {
			_ = os.RemoveAll(filepath.Join(s.instDir, e.Name()))
		}
	}
}

// liveInstances lists the instances not yet forgotten.
func (s *Server) liveInstances() []*Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]*Instance, 0, len(s.instances))
	for _, in := range s.instances {
		all = append(all, in)
	}
	return all
}

// noticeSessions writes n into the output of every session still running,
// charged to the instance's output like any record (a notice that does
// not fit is not written: the session's exit will say why it ended).
func (in *Instance) noticeSessions(n proto.Notice) {
	in.mu.Lock()
	var live []*session
	for _, ss := range in.sessions {
		if !ss.done {
			live = append(live, ss)
		}
	}
	in.mu.Unlock()
	for _, ss := range live {
		in.noticeSession(ss, n)
	}
}

func (in *Instance) noticeSession(ss *session, n proto.Notice) {
	b, _ := json.Marshal(n)
	cost := ss.out.charge(len(b))
	in.mu.Lock()
	if in.outputHeld+cost > in.mf().Resources.Output {
		in.mu.Unlock()
		return
	}
	in.outputHeld += cost
	ss.held += cost
	in.mu.Unlock()
	if _, err := ss.out.append(recNotice, b); err != nil {
		in.mu.Lock()
		in.outputHeld -= cost
		ss.held -= cost
		in.mu.Unlock()
	}
}

// endsAt is when the instance ends at the latest: its lifetime's end, or
// the box's if that comes first (box is then true).
func (in *Instance) endsAt() (time.Time, bool) {
	end := in.created.Add(in.mf().Resources.Lifetime)
	if b := in.srv.box(); b.ends() && b.end.Before(end) {
		return b.end, true
	}
	return end, false
}

// boxIdentity binds the box to its relay in the directory: the statement
// served with the policy, signed with the onion service's key.
type boxIdentity struct {
	relay  string
	ann    boxdir.Announcement
	signer *boxdir.OnionSigner

	mu     sync.Mutex
	cached string    // the last statement
	key    string    // what it said: digest and times
	at     time.Time // when it was signed
}

// statementMaxAge: a statement is signed again after this, so that its
// published time stays recent.
const statementMaxAge = time.Hour

// SetBoxIdentity makes the public policy carry a statement binding the
// box's onion address (ann, whose key signer holds) to the relay with
// fingerprint relay (docs/boxes.md). nil signer removes it.
func (s *Server) SetBoxIdentity(relay string, ann boxdir.Announcement, signer *boxdir.OnionSigner) {
	var id *boxIdentity
	if signer != nil {
		id = &boxIdentity{relay: relay, ann: ann, signer: signer}
	}
	s.mu.Lock()
	s.boxID = id
	s.mu.Unlock()
}

// statement returns the signed statement for pub (whose Box is set).
func (id *boxIdentity) statement(pub *policy.Public, b boxTimes, now time.Time) (string, error) {
	st := boxdir.Statement{Relay: id.relay, Box: id.ann, EndsAt: b.end, DrainAt: b.drain, PolicyDigest: boxdir.PublicDigest(pub)}
	key := fmt.Sprintf("%x %d %d", st.PolicyDigest, b.end.Unix(), b.drain.Unix())
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cached != "" && id.key == key && now.Sub(id.at) < statementMaxAge {
		return id.cached, nil
	}
	st.Published = now.UTC().Truncate(time.Second)
	text, err := st.Sign(id.signer)
	if err != nil {
		return "", err
	}
	id.cached, id.key, id.at = text, key, now
	return text, nil
}
