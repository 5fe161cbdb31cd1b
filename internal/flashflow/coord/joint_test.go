package coord

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/flashflow/schedule"
)

func TestParseCoordinators(t *testing.T) {
	got, err := ParseCoordinators(strings.NewReader("# bandwidth authorities\nmoria1 375000000 # 3 Gbit/s\n\nlonga 125000000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (schedule.Coordinator{ID: "moria1", Capacity: 375_000_000}) || got[1].ID != "longa" {
		t.Fatalf("got %+v", got)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "no coordinator"},
		{"a 125000000 extra\n", "line 1: want <coordinator ID>"},
		{"a 1000\n", "line 1: capacity"},
		{"a 1e9\n", "line 1: capacity"},
		{"a 999999999999999999999\n", "line 1: capacity"},
		{"a 125000000\na 125000000\n", "line 2: coordinator a listed twice"},
		{strings.Repeat("x", 129) + " 125000000\n", "line 1: ID"},
		{"caf\xc3\xa9 125000000\n", "line 1: ID"},
	} {
		if _, err := ParseCoordinators(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParseCoordinators(f *testing.F) {
	f.Add("moria1 375000000\nlonga 125000000 # x\n")
	f.Add("a 1\n")
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseCoordinators(strings.NewReader(s))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, c := range cs {
			if c.ID == "" || len(c.ID) > 128 || c.Capacity < 125_000 || c.Capacity > 1<<37 || seen[c.ID] {
				t.Fatalf("accepted %+v", c)
			}
			seen[c.ID] = true
		}
		// What the parser accepts, the scheduler must accept too.
		j := &Joint{Self: cs[0].ID, Coordinators: cs, Secret: make([]byte, MinSecret)}
		if _, _, err := j.Plan(schedule.DefaultParams(cs[0].Capacity), nil, [32]byte{}, 0); err != nil {
			t.Fatalf("parsed %+v, but the schedule refuses it: %v", cs, err)
		}
	})
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := strings.Repeat("5a", 32)
	b, err := ReadSecret(write("hex", key+"\n", 0o600))
	if err != nil || hex.EncodeToString(b) != key {
		t.Fatalf("hex secret: %x %v", b, err)
	}
	if b, err = ReadSecret(write("raw", strings.Repeat("k", 40), 0o400)); err != nil || string(b) != strings.Repeat("k", 40) {
		t.Fatalf("raw secret: %q %v", b, err)
	}
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"readable", key, 0o644, "chmod 600"},
		{"short", strings.Repeat("ab", 10), 0o600, "want at least 32"},
		{"big", strings.Repeat("a", 5000), 0o600, "short file"},
	} {
		if _, err := ReadSecret(write(tc.name, tc.content, tc.mode)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := ReadSecret(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was accepted")
	}
}

// Three coordinators, each planning alone from the same inputs, get the
// same joint schedule and never measure a relay in the same slot; a
// different secret or shared random value gives another schedule.
func TestJointPlanAgrees(t *testing.T) {
	cs := []schedule.Coordinator{{ID: "c", Capacity: 125_000_000}, {ID: "a", Capacity: 250_000_000}, {ID: "b", Capacity: 125_000_000}}
	relays := schedule.SyntheticNetwork(300, [32]byte{7})
	p := schedule.DefaultParams(1)
	secret := []byte(strings.Repeat("s", 32))
	srv := [32]byte{1, 2, 3}
	var digests []string
	slotOf := map[string]map[int]string{} // relay -> slot -> coordinator
	for _, self := range []string{"b", "a", "c"} {
		j := &Joint{Self: self, Coordinators: cs, Secret: secret}
		js, mine, err := j.Plan(p, relays, srv, 100)
		if err != nil {
			t.Fatal(err)
		}
		d := js.Digest()
		digests = append(digests, hex.EncodeToString(d[:]))
		if mine.Coordinator != self || mine.Len()+len(mine.Unscheduled) != len(relays) {
			t.Fatalf("%s: its schedule is %s's, %d measurements + %d unscheduled of %d relays", self, mine.Coordinator, mine.Len(), len(mine.Unscheduled), len(relays))
		}
		for i, slot := range mine.Slots {
			for _, a := range slot {
				if slotOf[a.Fingerprint] == nil {
					slotOf[a.Fingerprint] = map[int]string{}
				}
				if other, ok := slotOf[a.Fingerprint][i]; ok {
					t.Fatalf("relay %s measured by %s and %s in slot %d", a.Fingerprint, other, self, i)
				}
				slotOf[a.Fingerprint][i] = self
			}
		}
	}
	if digests[0] != digests[1] || digests[1] != digests[2] {
		t.Fatalf("coordinators computed different schedules: %v", digests)
	}
	for _, change := range []func(j *Joint, srv *[32]byte){
		func(j *Joint, srv *[32]byte) { j.Secret = []byte(strings.Repeat("t", 32)) },
		func(j *Joint, srv *[32]byte) { srv[0] ^= 1 },
	} {
		j := &Joint{Self: "a", Coordinators: cs, Secret: secret}
		s := srv
		change(j, &s)
		js, _, err := j.Plan(p, relays, s, 100)
		if err != nil {
			t.Fatal(err)
		}
		if d := js.Digest(); hex.EncodeToString(d[:]) == digests[0] {
			t.Error("another secret or shared random value gave the same schedule")
		}
	}
	if _, _, err := (&Joint{Self: "z", Coordinators: cs, Secret: secret}).Plan(p, relays, srv, 100); err == nil || !strings.Contains(err.Error(), "not in the deployment") {
		t.Errorf("a coordinator outside the deployment: %v", err)
	}
}
