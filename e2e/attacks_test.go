package e2e

import (
	"strings"
	"testing"
	"time"
)

// imageAttack is one attack of a hostile function (one invocation with
// the attack's name as its argument): the exit status it must end with
// and what it must say, in stdout for exit 0 and in stderr otherwise.
// "a|b" accepts either, and an alternative said on stderr whatever the
// exit status (a limit that may stop the runtime after the invocation
// returned).
type imageAttack struct {
	attack string
	code   int
	want   string
}

// runImageAttacks invokes each attack on the hostile instance token,
// fails the subtest when it is not contained (a wrong answer, or
// leaked tells: stdout naming root's passwd line, or "succeeded" where
// the want does not), and checks after each that the neighbour
// (neighbour, invoked with "dan") still answers "hello, dan!".
func runImageAttacks(t *testing.T, d *daemon, token, neighbour string, attacks []imageAttack) {
	for _, tc := range attacks {
		t.Run(tc.attack, func(t *testing.T) {
			start := time.Now()
			r := bento(t, "", "invoke", d.Addr, token, tc.attack)
			got := r.Stderr
			if tc.code == 0 {
				got = r.Stdout
			}
			ok := r.Code == tc.code && strings.Contains(got, tc.want)
			if alts := strings.Split(tc.want, "|"); len(alts) > 1 {
				for _, w := range alts {
					ok = ok || strings.Contains(r.Stdout+r.Stderr, w) && (r.Code == tc.code || strings.Contains(r.Stderr, w))
				}
			}
			if !ok {
				t.Fatalf("want exit %d with %q, got %s", tc.code, tc.want, r)
			}
			if strings.Contains(r.Stdout, "root:x:0") || strings.Contains(r.Stdout, "<nil>") ||
				(tc.code == 0 && strings.Contains(r.Stdout, "succeeded") && !strings.Contains(tc.want, "succeeded")) {
				t.Fatalf("the attack succeeded: %s", r)
			}
			t.Logf("%s: exit %d after %v: %s", tc.attack, r.Code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(trunc(got)))
			if r := bento(t, "", "invoke", d.Addr, neighbour, "dan"); r.Code != 0 || !strings.Contains(r.Stdout, "hello, dan!") {
				t.Fatalf("the neighbour after %s: %s", tc.attack, r)
			}
		})
	}
}
