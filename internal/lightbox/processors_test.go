package lightbox

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/torbento/bento/internal/capture"
	"github.com/torbento/bento/internal/etap"
	"github.com/torbento/bento/internal/middlebox"
	"github.com/torbento/bento/internal/testutil"
)

// TestBatchSameAsOne runs each middlebox over every shared capture twice,
// packet by packet and in batches of batchMax, with a small cache so that
// states move to the store and back, and checks that reports and passed
// packets are the same. Reports are compared as sorted lines: expiry runs
// after a batch's first packet one by one, after its last in a batch, so
// flows that expire together may be reported in another order.
func TestBatchSameAsOne(t *testing.T) {
	rulesFile, err := os.Open(filepath.Join("..", "middlebox", "testdata", "ids.rules"))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := middlebox.ParseRules(rulesFile)
	rulesFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, trace := range testutil.Traces(t) {
		c, err := capture.ReadFile(trace)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"monitor", "firewall", "ids"} {
			t.Run(filepath.Base(trace)+"/"+name, func(t *testing.T) {
				run := func(batched bool) (string, int) {
					var report bytes.Buffer
					p, finish, err := NewProcessor(ProcessorConfig{Name: name, Rules: rules, LinkType: c.LinkType, CacheEntries: 64,
						Inside: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}, Report: &report})
					if err != nil {
						t.Fatal(err)
					}
					passed := 0
					for i := 0; i < len(c.Packets); i += batchMax {
						group := make([]etap.Packet, 0, batchMax)
						for _, q := range c.Packets[i:min(i+batchMax, len(c.Packets))] {
							group = append(group, etap.Packet{Time: q.Time, OrigLen: q.OrigLen, Data: q.Data})
						}
						now := group[len(group)-1].Time
						if batched {
							passed += len(p.(BatchProcessor).ProcessBatch(group, now))
						} else {
							for _, q := range group {
								passed += len(p.Process(q, now))
							}
						}
					}
					if err := finish(); err != nil {
						t.Fatal(err)
					}
					lines := strings.Split(report.String(), "\n")
					sort.Strings(lines)
					return strings.Join(lines, "\n"), passed
				}
				one, onePassed := run(false)
				batch, batchPassed := run(true)
				if one != batch || onePassed != batchPassed {
					t.Fatalf("one by one: %d passed, report of %d bytes; batched: %d passed, report of %d bytes\n%s", onePassed, len(one), batchPassed, len(batch), firstDiff(one, batch))
				}
				if len(one) == 0 {
					t.Fatal("empty report")
				}
			})
		}
	}
}

func firstDiff(a, b string) string {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			lo := max(0, i-80)
			return fmt.Sprintf("first difference at byte %d:\n%q\n%q", i, a[lo:min(len(a), i+80)], b[lo:min(len(b), i+80)])
		}
	}
	return "one report is a prefix of the other"
}
