package coord

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/torbento/bento/internal/flashflow/schedule"
)

// Joint makes a Service one of several coordinators (bandwidth
// authorities) that share the network's measurement without talking to
// each other (prop 316 §5.2 with the review's non-interactive schedule):
// each computes the same joint schedule alone, from inputs all of them
// have, and measures only its own part of it. No two coordinators measure
// the same relay (or co-located group) in the same slot.
//
// The inputs that must be identical at every coordinator: the deployment
// (Coordinators), the secret they share (Secret), the period's shared
// random value from tor's consensus (srv in Plan), the schedule
// parameters, and the relays with their capacities. The relays are the
// targets file's, with the capacity its prior column gives (0: the
// 75th-percentile assumption): coordinators share one targets file; their
// own results, which differ, are never schedule inputs. The joint
// schedule's digest is logged each period so that operators can compare.
type Joint struct {
	Self         string                 // this coordinator's ID in Coordinators
	Coordinators []schedule.Coordinator // the whole deployment
	Secret       []byte                 // shared by the coordinators, at least 32 bytes
}

// Validate checks the deployment and that Self is in it.
func (j *Joint) Validate() error {
	if len(j.Secret) < MinSecret {
		return fmt.Errorf("flashflow: the shared secret is %d bytes; want at least %d", len(j.Secret), MinSecret)
	}
	for _, c := range j.Coordinators {
		if c.ID == j.Self {
			return nil
		}
	}
	return fmt.Errorf("flashflow: this coordinator (%q) is not in the deployment's list of coordinators", j.Self)
}

// Plan computes the joint schedule of a period and this coordinator's part.
func (j *Joint) Plan(p schedule.Params, relays []schedule.Relay, srv [32]byte, period uint64) (*schedule.JointSchedule, *schedule.Schedule, error) {
	if err := j.Validate(); err != nil {
		return nil, nil, err
	}
	js, err := schedule.PlanJoint(p, j.Coordinators, relays, schedule.DailySecret(j.Secret, srv, period))
	if err != nil {
		return nil, nil, err
	}
	mine, _ := js.For(j.Self)
	return js, mine, nil
}

// JointRelays turns targets into the joint schedule's relays: capacity
// from the targets file alone, the address for co-location from the
// bentod address.
func JointRelays(ts []Target) []schedule.Relay {
	relays := make([]schedule.Relay, 0, len(ts))
	for _, t := range ts {
		r := schedule.Relay{Fingerprint: t.Fingerprint, Capacity: t.Prior}
		if ap, err := netip.ParseAddrPort(t.Addr); err == nil {
			r.Addr = ap.Addr()
		}
		relays = append(relays, r)
	}
	return relays
}

// MinSecret is the shortest shared secret accepted, in bytes.
const MinSecret = 32

// ParseCoordinators reads a deployment file: one coordinator per line,
//
//	<coordinator ID> <measurer capacity, bytes/s>
//
// with '#' comments and blank lines ignored. IDs are 1-128 printable ASCII
// characters (a bandwidth authority's fingerprint, say); the capacity is
// the total of that coordinator's measurers, from 125,000 (1 Mbit/s) to
// 2^37 bytes/s. The file is bounded (64 KB, 1,000 coordinators).
func ParseCoordinators(r io.Reader) ([]schedule.Coordinator, error) {
	sc := bufio.NewScanner(io.LimitReader(r, 64<<10))
	var out []schedule.Coordinator
	seen := map[string]bool{}
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("coordinators line %d: want <coordinator ID> <measurer capacity, bytes/s>, got %d fields", n, len(f))
		}
		id := f[0]
		if len(id) > 128 || strings.IndexFunc(id, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			return nil, fmt.Errorf("coordinators line %d: ID %q: want 1 to 128 printable ASCII characters", n, id)
		}
		if seen[id] {
			return nil, fmt.Errorf("coordinators line %d: coordinator %s listed twice", n, id)
		}
		seen[id] = true
		c, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil || c < 125_000 || c > 1<<37 {
			return nil, fmt.Errorf("coordinators line %d: capacity %q: want bytes per second from 125000 (1 Mbit/s) to %d", n, f[1], uint64(1)<<37)
		}
		out = append(out, schedule.Coordinator{ID: id, Capacity: c})
		if len(out) > 1000 {
			return nil, errors.New("coordinators: more than 1,000 coordinators")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("coordinators: no coordinator listed")
	}
	return out, nil
}

// ReadSecret reads the coordinators' shared secret from a file that only
// its owner may read: hex (64 or more digits) or raw bytes (at least
// MinSecret), surrounding white space ignored.
func ReadSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("shared secret %s: mode %v lets others read it; chmod 600 %s", path, st.Mode().Perm(), path)
	}
	if st.Size() > 4096 {
		return nil, fmt.Errorf("shared secret %s: %d bytes; want a short file (64 hex digits)", path, st.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	b = bytes.TrimSpace(b)
	if h, err := hex.DecodeString(string(b)); err == nil {
		b = h
	}
	if len(b) < MinSecret {
		return nil, fmt.Errorf("shared secret %s: %d bytes; want at least %d (for example: head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > %s)", path, len(b), MinSecret, path)
	}
	return b, nil
}

// SlotTimes lists this coordinator's measurements of a period in time
// order: what `flashflow schedule` prints.
func SlotTimes(s *schedule.Schedule, periodStart time.Time) []string {
	var out []string
	for i, slot := range s.Slots {
		for _, a := range slot {
			out = append(out, fmt.Sprintf("%s slot %d %s estimate %d demand %d", s.SlotStart(periodStart, i).UTC().Format(time.RFC3339), i, a.Fingerprint, a.Estimate, a.Demand))
		}
	}
	return out
}
