#!/usr/bin/env bash
# test-package.sh: build Debian's bento package (scripts/package.sh),
# install it in a fresh Debian root made with debootstrap, boot a real
# systemd in that root (systemd-nspawn --boot, with no network but
# loopback) and check the package as an operator would use it:
#   - bentod.service is installed but neither enabled nor started;
#   - "systemctl start bentod" returns once bentod said READY=1
#     (Type=notify: systemd logs "Started" only after bentod serves);
#   - "bentoctl status" works through /run/bento/control as root;
#   - "systemctl reload bentod" makes bentod log "policy reloaded";
#   - "systemctl stop bentod" stops it and /run/bento goes;
#   - "dpkg --purge bento" leaves none of the package's files, no bento
#     user or group, no /etc/bento, /var/lib/bento, /var/log/bento or
#     /run/bento.
# tor is never installed in the root (--no-install-recommends, and a
# policy-rc.d that forbids starting services while packages install).
#
# The debootstrapped root is cached as a tarball in $BENTO_TEST_CACHE
# (default /var/cache/bento-test) between runs on one machine; the first
# run fetches it from Debian's mirror. Everything else the test makes (the
# root, the container, its mounts) is removed when it ends, pass or fail.
# It needs root, debootstrap and systemd-nspawn (bash scripts/setup.sh
# --test installs them) and fails without them: it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$EPOCHREALTIME
say() { printf 'test-package: [%5.1fs] %s\n' "$(awk "BEGIN { print $EPOCHREALTIME - $t0 }")" "$*" >&2; }
fail() { printf 'test-package: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter dpkg-deb findmnt flock; do
	command -v "$tool" >/dev/null || fail "$tool is missing: bash scripts/setup.sh --test installs what the tests need"
done

suite=${BENTO_TEST_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
mirror=${BENTO_TEST_MIRROR:-http://deb.debian.org/debian}
cache=${BENTO_TEST_CACHE:-/var/cache/bento-test}
# What the root holds besides minbase: systemd to boot, and the package's
# dependencies, so that installing it needs no network.
include=systemd,systemd-sysv,dbus,adduser,runc,procps
tarball="$cache/$suite-minbase-$(echo "$include" | md5sum | cut -c1-8).tar"

work=$(mktemp -d /var/tmp/bento-test-package.XXXXXX)
root=$work/root
nspawn_pid=
cleanup() {
	status=$?
	set +e
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		# SIGTERM to systemd-nspawn powers the container off; it was ours.
		kill -TERM "$nspawn_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$nspawn_pid" 2>/dev/null || true
		wait "$nspawn_pid" 2>/dev/null || true
	fi
	# Whatever is still mounted below the work directory, innermost first.
	findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf --one-file-system "$work" || status=1
	[ ! -e "$work" ] || { echo "test-package: could not remove $work" >&2; status=1; }
	[ "$status" = 0 ] || echo "test-package: failed; everything it made is removed" >&2
	exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# BENTO_TEST_DEB: a package already built from this tree (scripts/test.sh
# builds it once for this test and scripts/test-vm.sh).
if [ -n "${BENTO_TEST_DEB:-}" ]; then
	deb=$BENTO_TEST_DEB
	[ -f "$deb" ] || fail "BENTO_TEST_DEB=$deb: no such package"
else
	say "building the package"
	deb=$(bash scripts/package.sh -o "$work/out" 2>"$work/package.log" | tail -1) || { cat "$work/package.log"; fail "scripts/package.sh failed"; }
	[ -f "$deb" ] || fail "scripts/package.sh made no package"
fi
say "package $(basename "$deb")"

mkdir -p "$cache"
(
	flock 9
	if [ ! -s "$tarball" ]; then
		say "debootstrap $suite (--variant=minbase --include=$include) from $mirror into $tarball"
		debootstrap --variant=minbase --include="$include" "$suite" "$work/bootstrap" "$mirror" >"$work/debootstrap.log" 2>&1 ||
			{ tail -20 "$work/debootstrap.log"; fail "debootstrap failed"; }
		rm -rf "$work/bootstrap/var/cache/apt/archives/"*.deb "$work/bootstrap/var/lib/apt/lists/"*
		tar --numeric-owner -C "$work/bootstrap" -cf "$tarball.tmp" .
		mv "$tarball.tmp" "$tarball"
		rm -rf --one-file-system "$work/bootstrap"
	fi
) 9>"$cache/lock"
mkdir "$root"
tar --numeric-owner -C "$root" -xf "$tarball"
say "root ready ($(du -sh "$root" | cut -f1))"

# No service may start while packages install (tor above all, were it
# ever pulled in).
printf '#!/bin/sh\n# bento scripts/test-package.sh: never start services while installing\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp "$deb" "$root/root/bento.deb"
machine=bento-test-$$
in_root() { # a command in the root, not booted, with no network but loopback
	systemd-nspawn -q -D "$root" -M "$machine" --private-network --register=no --keep-unit --pipe "$@" 2>&1 |
		grep -v '^Attempted to remove disk file system' || true
}
say "installing the package (dpkg -i, then apt for its dependencies)"
in_root sh -c 'dpkg -i /root/bento.deb && DEBIAN_FRONTEND=noninteractive apt-get install -f -y -q --no-install-recommends && echo INSTALLED' >"$work/install.log"
grep -q '^INSTALLED$' "$work/install.log" || { cat "$work/install.log"; fail "the package did not install"; }
in_root sh -c 'dpkg-query -W -f="\${Status}\n" tor 2>/dev/null | grep -q "install ok installed" && echo TOR-INSTALLED; echo CHECKED' >"$work/tor.log"
grep -q '^TOR-INSTALLED$' "$work/tor.log" && fail "tor was installed in the test root"
grep -q '^CHECKED$' "$work/tor.log" || { cat "$work/tor.log"; fail "could not check for tor"; }

say "booting systemd in the root (systemd-nspawn --boot --private-network)"
systemd-nspawn -q -D "$root" -M "$machine" --boot --private-network --register=no --keep-unit --console=passive \
	>"$work/boot.log" 2>&1 &
nspawn_pid=$!
# The container's init is the child of systemd-nspawn that runs systemd:
# nspawn may first fork a helper that exits, so the child is looked for
# (again) until it is systemd itself.
container_init() {
	local pid
	for pid in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null || true); do
		case "$(cat /proc/"$pid"/comm 2>/dev/null || true)" in
		systemd | init)
			echo "$pid"
			return
			;;
		esac
	done
}
init=
for _ in $(seq 300); do
	init=$(container_init)
	[ -n "$init" ] && break
	kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/boot.log"; fail "systemd-nspawn exited"; }
	sleep 0.1
done
[ -n "$init" ] || fail "no systemd in the container after 30 s (children of systemd-nspawn: $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null || true))"
in_box() { nsenter -t "$init" -a -- "$@"; }
state=
for _ in $(seq 600); do
	state=$(in_box systemctl is-system-running 2>/dev/null || true)
	case "$state" in running | degraded) break ;; esac
	kill -0 "$init" 2>/dev/null || init=$(container_init)
	[ -n "$init" ] || { cat "$work/boot.log"; fail "the container's systemd is gone"; }
	sleep 0.1
done
case "$state" in
running) ;;
degraded) in_box systemctl --failed --no-pager >&2 || true ;;
*) cat "$work/boot.log"; fail "systemd did not come up (state: $state)" ;;
esac
say "systemd is up ($state)"

links=$(in_box ls /sys/class/net | tr '\n' ' ')
[ "$links" = "lo " ] || fail "the container has network links besides loopback: $links"
[ "$(in_box systemctl is-enabled bentod.service 2>/dev/null || true)" = disabled ] || fail "bentod.service is enabled on install"
[ "$(in_box systemctl is-active bentod.service 2>/dev/null || true)" = inactive ] || fail "bentod.service runs on install"
in_box systemctl is-active --quiet tor.service 2>/dev/null && fail "tor runs in the test root"

say "systemctl start bentod"
in_box systemctl start bentod.service || { in_box journalctl -u bentod --no-pager >&2; fail "systemctl start bentod failed"; }
show=$(in_box systemctl show bentod.service -p Type -p ActiveState -p SubState -p StatusText -p NotifyAccess -p WatchdogUSec)
for want in Type=notify ActiveState=active SubState=running StatusText=serving NotifyAccess=main; do
	grep -qx "$want" <<<"$show" || fail "after systemctl start: want $want, have: $(tr '\n' ' ' <<<"$show")"
done
grep -q '^WatchdogUSec=0$' <<<"$show" && fail "bentod.service has no watchdog"
# Type=notify: systemd says "Started" only after bentod served (READY=1).
journal=$(in_box journalctl -u bentod.service --no-pager -o cat)
ready=$(grep -n 'bentod listening' <<<"$journal" | head -1 | cut -d: -f1)
started=$(grep -n '^Started bentod.service' <<<"$journal" | head -1 | cut -d: -f1)
[ -n "$ready" ] && [ -n "$started" ] && [ "$ready" -lt "$started" ] ||
	{ echo "$journal" >&2; fail "systemd did not wait for bentod to serve before calling it started"; }
# User bento: bentod gives up root where containers can run rootless (the
# VM test, on cgroup v2, checks that it does); here it says why it cannot.
if line=$(grep -m1 'running as an unprivileged user' <<<"$journal"); then
	say "User bento: $line"
elif line=$(grep -m1 'staying root' <<<"$journal"); then
	say "User bento: $line"
else
	echo "$journal" >&2
	fail "bentod neither switched to User bento nor said why it stays root"
fi

say "bentoctl status"
status=$(in_box bentoctl status) || fail "bentoctl status failed"
grep -q '^bentod (bentod/' <<<"$status" || fail "bentoctl status said: $status"
sock=$(in_box stat -c '%U:%G %a' /run/bento/control)
[ "$sock" = "root:bento 660" ] || fail "/run/bento/control is $sock, want root:bento 660"

say "systemctl reload bentod"
in_box systemctl reload bentod.service || { in_box journalctl -u bentod --no-pager >&2; fail "systemctl reload bentod failed"; }
for _ in $(seq 100); do
	in_box journalctl -u bentod.service --no-pager -o cat | grep -q 'policy reloaded' && break
	sleep 0.1
done
in_box journalctl -u bentod.service --no-pager -o cat | grep -q 'policy reloaded' ||
	{ in_box journalctl -u bentod --no-pager >&2; fail "no \"policy reloaded\" in the journal after systemctl reload"; }
in_box systemctl is-active --quiet bentod.service || fail "bentod is not active after the reload"

say "systemctl stop bentod"
in_box systemctl stop bentod.service || fail "systemctl stop bentod failed"
[ "$(in_box systemctl is-active bentod.service 2>/dev/null || true)" = inactive ] || fail "bentod still runs after systemctl stop"
in_box test ! -e /run/bento || fail "/run/bento is left after the stop"

say "dpkg --purge bento"
files=$(in_box dpkg-query -L bento)
in_box dpkg --purge bento >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge bento failed"; }
left=
while read -r f; do
	case "$f" in
	/. | /etc | /lib | /usr | /usr/bin | /usr/sbin | /usr/lib | /usr/share | /usr/share/doc | /usr/share/man | /usr/share/man/man? | \
		/etc/logrotate.d | /lib/systemd | /lib/systemd/system | /usr/share/lintian | /usr/share/lintian/overrides) ;; # shared with other packages
	*) [ -e "$root$f" ] && left="$left $f" ;;
	esac
done <<<"$files"
for f in /etc/bento /var/lib/bento /var/log/bento /run/bento /etc/systemd/system/multi-user.target.wants/bentod.service; do
	in_box test -e "$f" && left="$left $f"
done
[ -z "$left" ] || fail "left after purge:$left"
in_box getent passwd bento >/dev/null && fail "the bento user is left after purge"
in_box getent group bento >/dev/null && fail "the bento group is left after purge"
say "purged: nothing left"

echo "test-package: passed (bento $(basename "$deb" .deb | cut -d_ -f2) on Debian $suite under systemd-nspawn --boot)"
