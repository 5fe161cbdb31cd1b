#!/usr/bin/env bash
# test.sh: set up, then run every check and test: gofmt, go vet,
# staticcheck, the unit and end-to-end suites with the race detector (real
# runc containers), a short run of every fuzz target, and the demo.
#
# Under CI=true a missing prerequisite fails the tests instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
# A count, not a duration: duration-based -fuzztime can fail spuriously with
# "context deadline exceeded" (a race in Go's fuzz coordinator,
# golang/go#75804); a count has no deadline to race.
FUZZTIME=${FUZZTIME:-10000x}

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# The README's demo is part of the product: it must keep working, and it
# must fail loudly when a step fails (one step broken on purpose). Both
# runs go in the background beside the static checks and the fuzzing,
# which assert nothing about time (the demo's private Tor network is a
# namespace of its own, and it waits for its steps with generous
# deadlines); the tests start only once they are done, since some of them
# time things (a neighbour against a baseline, a constant rate).
demo() {
	if bash scripts/demo.sh >/tmp/bento-demo.log 2>&1 && tail -1 /tmp/bento-demo.log | grep -q '^demo finished$'; then
		echo "demo finished"
	else
		cat /tmp/bento-demo.log
		echo "the demo failed"
		return 1
	fi
	if DEMO_BREAK=hello bash scripts/demo.sh >/tmp/bento-demo-broken.log 2>&1; then
		cat /tmp/bento-demo-broken.log
		echo "the demo passed with a broken step"
		return 1
	fi
	if ! grep -q "^demo: step hello failed" /tmp/bento-demo-broken.log || grep -q '^demo finished' /tmp/bento-demo-broken.log; then
		cat /tmp/bento-demo-broken.log
		echo "the broken demo did not stop at the broken step"
		return 1
	fi
	echo "with a step broken on purpose (DEMO_BREAK=hello), the demo failed as it must: $(grep '^demo: step' /tmp/bento-demo-broken.log)"
}
demo >/tmp/bento-demo-summary.log 2>&1 &
demo_pid=$!
# Debian's package, built once (about 30 s), then installed at once in a
# Debian root booted with systemd-nspawn (scripts/test-package.sh: about
# 10 s; the first run on a machine also fetches the root, about 55 s more)
# and, for cgroup v2 (this machine's are v1), in a virtual machine with
# Debian's kernel and systemd (scripts/test-vm.sh: about 100 s under
# QEMU's TCG on one core; the first run on a machine also makes its disk
# image, about 3 minutes more). They assert nothing about time either, so
# they run beside the static checks too.
packages() {
	local deb status=0 pkg vm
	rm -rf /tmp/bento-test-deb
	if ! deb=$(bash scripts/package.sh -o /tmp/bento-test-deb 2>/tmp/bento-package-build.log | tail -1) || [ ! -f "$deb" ]; then
		cat /tmp/bento-package-build.log >/tmp/bento-package-test.log
		echo "scripts/package.sh failed" | tee /tmp/bento-vm-test.log >>/tmp/bento-package-test.log
		return 1
	fi
	BENTO_TEST_DEB=$deb bash scripts/test-package.sh >/tmp/bento-package-test.log 2>&1 &
	pkg=$!
	BENTO_TEST_DEB=$deb bash scripts/test-vm.sh >/tmp/bento-vm-test.log 2>&1 &
	vm=$!
	wait "$pkg" || status=1
	wait "$vm" || status=1
	rm -rf /tmp/bento-test-deb
	return "$status"
}
packages &
package_pid=$!
# Whatever fails first, the demo and the package tests end before this
# script does: nothing they started outlives the test command.
trap 'wait "$demo_pid" 2>/dev/null || true; wait "$package_pid" 2>/dev/null || true' EXIT

step gofmt
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	printf 'gofmt would change:\n%s\n' "$unformatted"
	exit 1
fi

step "go vet"
go vet ./...

step staticcheck
if ! command -v staticcheck >/dev/null; then
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
staticcheck ./...

step "fuzz targets (${FUZZTIME} inputs each)"
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		echo "fuzz $pkg $target"
		go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >/tmp/bento-fuzz.log 2>&1 || {
			cat /tmp/bento-fuzz.log
			exit 1
		}
	done
done

step "tests (race detector, real runc)"
# -v for the count of tests run; the summary lines go to the terminal, the
# whole log to /tmp/bento-test.log (printed when something fails).
# The unit packages first, then the end-to-end package alone: its load
# tests time a neighbour against a baseline and must not share the two
# cores with other packages' tests.
set +e
wait "$demo_pid"
demo_status=$?
wait "$package_pid"
package_status=$?
go test -race -count=1 -v -timeout 25m $(go list ./... | grep -v '/e2e$') >/tmp/bento-test.log 2>&1
status=$?
printf 'unit tests done; end-to-end tests start (%s)\n' "$(date -u +%H:%M:%S)"
go test -race -count=1 -v -parallel 4 -timeout 25m ./e2e/ >>/tmp/bento-test.log 2>&1
e2e_status=$?
printf 'end-to-end tests done (%s)\n' "$(date -u +%H:%M:%S)"
[ "$status" = 0 ] && status=$e2e_status
set -e
grep -E '^(ok|FAIL|---|panic:)|^\s+--- (FAIL|SKIP)' /tmp/bento-test.log | grep -v -- '--- PASS' || true
passed=$(grep -c '^ok ' /tmp/bento-test.log || true)
failed=$(grep -c '^FAIL' /tmp/bento-test.log || true)
ran=$(grep -c '^=== RUN' /tmp/bento-test.log || true)
skipped=$(grep -c -- '--- SKIP' /tmp/bento-test.log || true)
echo "packages: ${passed} passed, ${failed} failed; tests and subtests run: ${ran}, skipped: ${skipped}"

step "demo (scripts/demo.sh, over a private Tor network; run beside the static checks and fuzzing)"
cat /tmp/bento-demo-summary.log

step "Debian package (scripts/test-package.sh, scripts/test-vm.sh; run beside the static checks and fuzzing)"
if [ "$package_status" = 0 ]; then
	grep -E '^test-package: (\[|passed)' /tmp/bento-package-test.log
	grep -E '^test-vm: (\[|passed)' /tmp/bento-vm-test.log
else
	cat /tmp/bento-package-test.log /tmp/bento-vm-test.log
fi

if [ "$status" != 0 ]; then
	cat /tmp/bento-test.log
	exit "$status"
fi
# Every test runs, on a fresh clone as in CI: nothing may skip.
if [ "$skipped" != 0 ]; then
	grep -B5 -- '--- SKIP' /tmp/bento-test.log
	echo "tests skipped: the test command runs every test (install what is missing: bash scripts/setup.sh --test)"
	exit 1
fi
if [ "$demo_status" != 0 ]; then
	echo "the demo failed (above)"
	exit 1
fi
if [ "$package_status" != 0 ]; then
	echo "the Debian package tests failed (above)"
	exit 1
fi
