package middlebox

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/torbento/bento/internal/lightbox/tracegen"
)

// TestIDSEvasionSuite runs the IDS over tracegen's corpus: the evasion
// capture (the same request sent in every way an attacker might hide it:
// fragments, extension headers, tiny, reordered, late and overlapping
// segments, VLAN tags, forged SYN and RST), encapsulations and tunnels,
// and the Linux cooked and NFLOG link types; and checks each case's
// alerts, in order, against what the corpus (and for the evasions
// docs/SECURITY.md) says.
func TestIDSEvasionSuite(t *testing.T) {
	corpus, err := tracegen.Corpus()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ParseRules(strings.NewReader(tracegen.EvasionRules))
	if err != nil {
		t.Fatal(err)
	}
	for _, cc := range corpus {
		for name, table := range tables(t, IDSStateSize) {
			t.Run(cc.Name+"/"+name, func(t *testing.T) {
				x, err := NewIDS(table, mustDecoder(t, cc.LinkType), rules)
				if err != nil {
					t.Fatal(err)
				}
				r, err := pcapgo.NewReader(bytes.NewReader(cc.Data))
				if err != nil {
					t.Fatal(err)
				}
				for {
					data, ci, err := r.ReadPacketData()
					if err != nil {
						break
					}
					if err := x.Handle(data, ci.Timestamp); err != nil {
						t.Fatal(err)
					}
				}
				got := map[netip.Addr][]int{}
				for _, a := range x.Alerts {
					got[a.Src.Addr()] = append(got[a.Src.Addr()], a.SID)
				}
				for _, c := range cc.Cases {
					if fmt.Sprint(got[c.Client]) != fmt.Sprint(c.Want) {
						t.Errorf("%s: alerts %v, want %v (%s)", c.Name, got[c.Client], c.Want, c.Why)
					}
					delete(got, c.Client)
				}
				for a, sids := range got {
					t.Errorf("alerts %v from %s, which is no case's", sids, a)
				}
				if s := x.dec.Stats; s.Malformed+s.NotIP != 0 {
					t.Errorf("packets not decoded: %v", s)
				}
			})
		}
	}
}

// TestEvasionTableDocumented: docs/SECURITY.md's table of evasions lists
// exactly the suite's cases, each with the alerts the suite checks.
func TestEvasionTableDocumented(t *testing.T) {
	_, cases, err := tracegen.Evasions()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "## LightBox's IDS against evasion")
	if !ok {
		t.Fatal("docs/SECURITY.md has no section \"LightBox's IDS against evasion\"")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var rows []string
	for _, l := range strings.Split(sec, "\n") {
		if f := strings.Split(l, " | "); strings.HasPrefix(l, "| ") && len(f) == 3 && !strings.HasPrefix(l, "| case") {
			rows = append(rows, strings.TrimPrefix(f[0], "| ")+": "+f[1])
		}
	}
	var want []string
	for _, c := range cases {
		w := fmt.Sprint(c.Want)
		want = append(want, c.Name+": "+strings.ReplaceAll(strings.Trim(w, "[]"), " ", ", "))
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the documented table:\n%s\nthe suite:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}
