package e2e

import "testing"

// TestSideBySide runs, side by side (as many at once as -parallel allows:
// scripts/test.sh gives 4), the end-to-end tests whose time is mostly
// waiting (containers starting and stopping, bentod killed and started
// again) and that measure no time: their only deadlines are readiness
// waits of 5-20 s around steps of milliseconds. Each has its own bentod,
// data directory and ports, and the harness checks for leftovers per
// bentod, so running them together changes nothing they check and takes
// a minute or more off the suite. Tests that time something (the siege's
// neighbour, a restart answering within 2 s, an expiry, a constant rate),
// the ones that load the machine (TestBenchmarkCommands compiles) and the
// tests on the shared Tor network run one at a time.
func TestSideBySide(t *testing.T) {
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"StopRightAfterCrash", testStopRightAfterCrash},
		{"RestoreInstances", testRestoreInstances},
		{"RestoreKeepsDataUnderANarrowerPolicy", testRestoreKeepsDataUnderANarrowerPolicy},
		{"CrashAtRandom", testCrashAtRandom},
		{"CrashRecovery", testCrashRecovery},
		{"SecondBentodRefused", testSecondBentodRefused},
		{"LightboxBounce", testLightboxBounce},
		{"SessionIDFirst", testSessionIDFirst},
		{"Reattach", testReattach},
		{"Composition", testComposition},
		{"SharedTokenAndShutdown", testSharedTokenAndShutdown},
		{"Prefetch", testPrefetch},
		{"ManyInvocations", testManyInvocations},
		{"Reload", testReload},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t)
		})
	}
}
