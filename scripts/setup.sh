#!/usr/bin/env bash
# setup.sh: install what Bento needs on a Debian machine and build it.
#
#   bash scripts/setup.sh          what bentod needs on a relay: runc,
#                                  iproute2, util-linux and tor (never
#                                  started as a service on install); no
#                                  build tools, nothing for the tests
#   bash scripts/setup.sh --test   the same, and what the tests need
#                                  besides: gcc (the race detector), curl,
#                                  tshark, cloud-init, tmux, debootstrap,
#                                  systemd-container, qemu-system-x86,
#                                  e2fsprogs, python3 and python3-requests
#                                  (scripts/test.sh runs this)
#
# Needs root (containers are started through runc as root). Checks for Go
# and builds bentod, bentoctl, bento and the static bento-runner into
# ./bin. It changes nothing else on the system: a policy-rc.d it puts in
# place while packages install is removed again.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

tests=0
case "${1:-}" in
"") ;;
--test) tests=1 ;;
*) die "usage: bash scripts/setup.sh [--test]" ;;
esac

[ "$(id -u)" = 0 ] || die "run as root: bentod starts containers through runc (sudo bash scripts/setup.sh)"

export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
command -v go >/dev/null || die "Go is missing: install Go 1.26 or later from go.dev/dl into /usr/local/go"

apt_updated=0
need_pkg() { # need_pkg COMMAND PACKAGE
	command -v "$1" >/dev/null && return 0
	if ! command -v apt-get >/dev/null; then
		die "$1 is missing and this is not a Debian-like system: install the $2 package by hand"
	fi
	if [ "$apt_updated" = 0 ]; then
		say "apt-get update"
		apt-get update -qq || die "apt-get update failed"
		apt_updated=1
	fi
	say "installing $2"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || die "apt-get install $2 failed"
	command -v "$1" >/dev/null || die "$2 installed but $1 is still not in PATH"
}

need_pkg runc runc
need_pkg ip iproute2
need_pkg unshare util-linux
if [ "$tests" = 1 ]; then
	need_pkg curl curl     # the demo fetches through Tor with it
	need_pkg tshark tshark # the reference the LightBox tests check the middleboxes against
	need_pkg gcc gcc       # the race detector needs cgo
	need_pkg tmux tmux     # bentoctl top's live view, driven as a terminal
	need_pkg debootstrap debootstrap             # scripts/test-package.sh: a Debian root
	need_pkg systemd-nspawn systemd-container    # ... booted with its own systemd
	need_pkg qemu-system-x86_64 qemu-system-x86 # scripts/test-vm.sh: cgroup v2 in a VM
	need_pkg mkfs.ext4 e2fsprogs                 # ... its disks
	need_pkg clang clang   # the wasm image's second language (C, --target=wasm32-wasi) ...
	need_pkg wasm-ld lld   # ... its linker
	need_pkg /usr/bin/python3 python3 # the python image (docs/python.md): Debian's, not a shim in PATH ...
	if [ ! -d /usr/lib/python3/dist-packages/requests ]; then # ... and the requests its Browser uses
		say "installing python3-requests"
		[ "$apt_updated" = 1 ] || { apt-get update -qq || die "apt-get update failed"; apt_updated=1; }
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-requests >/dev/null || die "apt-get install python3-requests failed"
	fi
	if [ ! -e /usr/lib/wasm32-wasi/libc.a ] || ! ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; then
		say "installing wasi-libc and libclang-rt-dev-wasm32"
		[ "$apt_updated" = 1 ] || { apt-get update -qq || die "apt-get update failed"; apt_updated=1; }
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wasi-libc libclang-rt-dev-wasm32 >/dev/null || die "apt-get install wasi-libc libclang-rt-dev-wasm32 failed"
	fi
fi
# Debian's tor for the private Tor network of the tests and the demo, and
# (tests only) cloud-init for checking the dust motes' user-data
# (cloud-init schema). Either package would start a system service on
# install (tor on the public network): forbid that while they install
# (policy-rc.d exit 101 = "do not start services"), and take the ban away
# again if it was ours.
if ! command -v tor >/dev/null || ! command -v tor-gencert >/dev/null || { [ "$tests" = 1 ] && ! command -v cloud-init >/dev/null; }; then
	ours_policy_rc=0
	# If an install fails, the ban it put in place goes all the same.
	trap '[ "$ours_policy_rc" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
	if grep -qs 'written by bento scripts/setup.sh' /usr/sbin/policy-rc.d; then
		ours_policy_rc=1 # left by an earlier version of this script
	elif [ ! -e /usr/sbin/policy-rc.d ]; then
		say "installing /usr/sbin/policy-rc.d (exit 101) so that installing tor starts no service"
		printf '#!/bin/sh\n# written by bento scripts/setup.sh while it installs packages: never start services\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		ours_policy_rc=1
	elif ! grep -q 'exit 101' /usr/sbin/policy-rc.d; then
		die "/usr/sbin/policy-rc.d exists and may let tor start as a service on the public network: install tor by hand"
	fi
	need_pkg tor tor
	if [ "$tests" = 1 ]; then
		need_pkg cloud-init cloud-init
	fi
	if [ "$ours_policy_rc" = 1 ]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	trap - EXIT
fi

say "building into ./bin"
mkdir -p bin
CGO_ENABLED=0 go build -trimpath -o bin/ ./cmd/bentod ./cmd/bentoctl ./cmd/bento ./cmd/bento-runner ./cmd/lightbox ./cmd/privnet
say "ready: $(runc --version | head -1), $(tor --version | head -1), $(go version)"
