#!/usr/bin/env bash
# test-vm.sh: Debian's bento package on cgroup v2 under a real systemd, in
# a virtual machine: this machine's own cgroups are v1, and
# systemd-nspawn on a v1 host gives its container no v2 hierarchy to
# delegate, so scripts/test-package.sh cannot check where containers'
# cgroups go. QEMU boots Debian's own kernel (linux-image-amd64) and
# systemd (the unified hierarchy, bookworm's default) from a debootstrapped
# root, with no network device; inside it the test
#   - installs the package (dpkg -i) and runs "systemctl start bentod";
#   - checks that bentod moved into the leaf
#     /system.slice/bentod.service/daemon, gave it its own memory ceiling,
#     and said so in the journal (and that the unit sets no MemoryMax=,
#     which would bound the functions too);
#   - deploys a function with the bento CLI over loopback and checks, from
#     /proc/PID/cgroup of its container's process, that the container is
#     in /system.slice/bentod.service/instances/ID, with the function's
#     memory and pids limits there, and that bentoctl ls reads its memory
#     from that cgroup; reloads bentod (systemctl reload); invokes it
#     (one-shot: the instance ends, its container and cgroup go);
#   - stops bentod: the service's cgroup, daemon/ and instances/ go.
# It talks to the VM through two serial ports: the console (ttyS0, kept in
# the log) and the test's own lines (ttyS1).
#
# The VM's disk image (the root, with the kernel and a boot hook that
# mounts the second disk and runs its run.sh) is cached in
# $BENTO_TEST_CACHE (default /var/cache/bento-test) between runs on one
# machine; the first run makes it with debootstrap from Debian's mirror.
# QEMU runs it with -snapshot: the cached image is never written. The
# second disk holds the package and run.sh, made afresh each run.
#
# Acceleration: BENTO_VM_ACCEL (default tcg). Nested KVM exists on the
# machines this project is tested on but hangs in the kernel's early boot
# (seen: "Probing EDD" and nothing more after 3 minutes; with -cpu host
# QEMU aborts on MSR 0x10a); TCG boots to systemd in about 50 s on one
# core. Needs root, debootstrap, qemu-system-x86 and e2fsprogs (bash
# scripts/setup.sh --test installs them) and fails without them: it never
# skips.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$EPOCHREALTIME
say() { printf 'test-vm: [%5.1fs] %s\n' "$(awk "BEGIN { print $EPOCHREALTIME - $t0 }")" "$*" >&2; }
fail() { printf 'test-vm: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap)"
for tool in debootstrap qemu-system-x86_64 mkfs.ext4 dpkg-deb flock md5sum; do
	command -v "$tool" >/dev/null || fail "$tool is missing: bash scripts/setup.sh --test installs what the tests need"
done

suite=${BENTO_TEST_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
mirror=${BENTO_TEST_MIRROR:-http://deb.debian.org/debian}
cache=${BENTO_TEST_CACHE:-/var/cache/bento-test}
accel=${BENTO_VM_ACCEL:-tcg}
deadline=${BENTO_VM_TIMEOUT:-480} # seconds for the VM's whole run
# The root: systemd to boot (udev for the disks), the package's
# dependencies (so installing it needs no network), and Debian's kernel
# with its initramfs; Debian's python3 and python3-requests for the python
# image.
include=systemd,systemd-sysv,dbus,udev,adduser,runc,procps,linux-image-amd64,python3,python3-requests
# The boot hook: mount the second disk read-only and run its run.sh, the
# output to the second serial port; power off when it ends, whatever it
# did.
hook='[Unit]
Description=bento scripts/test-vm.sh: run the test on the second disk
Requires=dev-vdb.device
After=dev-vdb.device multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardOutput=file:/dev/ttyS1
StandardError=inherit
ExecStart=/bin/sh -c "mkdir -p /run/bento-test && mount -o ro /dev/vdb /run/bento-test && exec /bin/bash /run/bento-test/run.sh"

[Install]
WantedBy=multi-user.target
'
key=$(printf '%s\n%s\n' "$include" "$hook" | md5sum | cut -c1-8)
image=$cache/$suite-vm-$key.img

work=$(mktemp -d /var/tmp/bento-test-vm.XXXXXX)
qemu_pid=
cleanup() {
	status=$?
	set +e
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null # our QEMU: the VM goes with it
		wait "$qemu_pid" 2>/dev/null
	fi
	rm -rf --one-file-system "$work" || status=1
	[ ! -e "$work" ] || { echo "test-vm: could not remove $work" >&2; status=1; }
	[ "$status" = 0 ] || echo "test-vm: failed; everything it made is removed" >&2
	exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# BENTO_TEST_DEB: a package already built from this tree (scripts/test.sh
# builds it once for this test and scripts/test-package.sh).
if [ -n "${BENTO_TEST_DEB:-}" ]; then
	deb=$BENTO_TEST_DEB
else
	say "building the package"
	deb=$(bash scripts/package.sh -o "$work/out" 2>"$work/package.log" | tail -1) || { cat "$work/package.log"; fail "scripts/package.sh failed"; }
fi
[ -f "$deb" ] || fail "no package at $deb"
say "package $(basename "$deb")"

mkdir -p "$cache"
(
	flock 9
	if [ ! -s "$image" ]; then
		say "debootstrap $suite (--variant=minbase --include=$include) from $mirror for $image"
		root=$work/bootstrap
		debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
			{ tail -20 "$work/debootstrap.log"; fail "debootstrap failed"; }
		rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
		printf '%s' "$hook" >"$root/etc/systemd/system/bento-vm-test.service"
		ln -s /etc/systemd/system/bento-vm-test.service "$root/etc/systemd/system/multi-user.target.wants/bento-vm-test.service"
		echo bento-vm >"$root/etc/hostname"
		# No getty on the console: the test owns the machine.
		ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
		ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
		cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
		cp "$root"/boot/initrd.img-* "$work/initrd"
		# The image holds the root and, beside it in the cache, the kernel
		# and initramfs QEMU boots (-kernel, -initrd).
		truncate -s 3G "$image.tmp"
		mkfs.ext4 -q -F -L bento-vm -d "$root" "$image.tmp" || fail "mkfs.ext4 -d failed"
		mv "$work/vmlinuz" "$image.vmlinuz"
		mv "$work/initrd" "$image.initrd"
		mv "$image.tmp" "$image"
		rm -rf --one-file-system "$root"
		# Images made for another root or boot hook are stale.
		for old in "$cache/$suite"-vm-*.img; do
			[ "$old" = "$image" ] || rm -f "$old" "$old.vmlinuz" "$old.initrd"
		done
	fi
) 9>"$cache/vm.lock"
[ -s "$image.vmlinuz" ] && [ -s "$image.initrd" ] || fail "the cached image $image has no kernel beside it: remove it and run again"
say "image ready ($image, $(du -h "$image" | cut -f1) used)"

# The second disk: the package and the test the hook runs.
mkdir "$work/disk"
cp "$deb" "$work/disk/bento.deb"
cat >"$work/disk/run.sh" <<'EOF'
# Runs in the VM as root, from the boot hook; every line it prints goes
# to the host (ttyS1).
set -u
say() { echo "bento-vm: $*"; }
fail() {
	echo "bento-vm: FAIL: $*"
	journalctl -u bentod.service --no-pager -o cat 2>&1 | tail -40 | sed 's/^/bento-vm: journal: /'
	ls -laR /var/lib/bento/instances 2>&1 | head -30 | sed 's/^/bento-vm: files: /'
	grep -h '^Uid' /proc/"$(systemctl show -p MainPID --value bentod.service)"/task/*/status 2>&1 | sort | uniq -c | sed 's/^/bento-vm: threads: /'
	exit 1
}
svc=/system.slice/bentod.service
say "booted: kernel $(uname -r), $(systemctl --version | head -1), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || fail "/sys/fs/cgroup is not cgroup v2"
[ "$(ls /sys/class/net)" = lo ] || fail "the VM has network links besides loopback: $(ls /sys/class/net | tr '\n' ' ')"

dpkg -i /run/bento-test/bento.deb >/tmp/dpkg.log 2>&1 || { sed 's/^/bento-vm: dpkg: /' /tmp/dpkg.log; fail "dpkg -i bento.deb failed"; }
# The python image too (Debian's CPython, bind-mounted read-only).
echo 'Image starlark, python' >>/etc/bento/bentorc
systemctl start bentod.service || fail "systemctl start bentod failed"
main=$(systemctl show -p MainPID --value bentod.service)
own=$(cat /proc/"$main"/cgroup)
say "bentod (pid $main) is in $own"
[ "$own" = "0::$svc/daemon" ] || fail "bentod is in $own, want 0::$svc/daemon"
procs=$(cat /sys/fs/cgroup$svc/cgroup.procs)
[ -z "$procs" ] || fail "processes left in $svc itself (cgroup v2 allows none beside child cgroups with controllers): $procs"
sub=$(cat /sys/fs/cgroup$svc/cgroup.subtree_control)
for c in cpu memory pids; do
	case " $sub " in *" $c "*) ;; *) fail "$c is not enabled in $svc/cgroup.subtree_control ($sub)" ;; esac
done
log=$(journalctl -u bentod.service --no-pager -o cat)
grep -q "containers' cgroups: cgroup v2, own cgroup $svc delegated: bentod in $svc/daemon, containers below $svc/instances" <<<"$log" ||
	fail "bentod did not log the delegated placement"
say "journal: $(grep "containers' cgroups" <<<"$log" | head -1)"
# User bento: on a delegated cgroup v2, bentod gives up root.
grep -q 'running as an unprivileged user' <<<"$log" || fail "bentod did not switch to User bento: $(grep -m1 'staying root' <<<"$log")"
[ "$(stat -c %U /proc/"$main")" = bento ] || fail "bentod runs as $(stat -c %U /proc/"$main"), want bento"
grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/"$main"/status || fail "bentod holds capabilities: $(grep CapEff /proc/"$main"/status)"
say "bentod runs as $(stat -c %U /proc/"$main") with no capabilities"
# bentod's own hard ceiling is its leaf's (MaxDaemonMemory 512 MB + 256
# MB, no swap); the unit sets no MemoryMax= (it would bound the functions
# too), so the service's cgroup has none and bentod has nothing to warn of.
leafmax=$(cat /sys/fs/cgroup$svc/daemon/memory.max)
[ "$leafmax" = $((768 << 20)) ] || fail "$svc/daemon/memory.max is $leafmax, want $((768 << 20))"
[ "$(cat /sys/fs/cgroup$svc/daemon/memory.swap.max)" = 0 ] || fail "$svc/daemon/memory.swap.max is not 0"
[ "$(cat /sys/fs/cgroup$svc/memory.max)" = max ] || fail "$svc/memory.max is $(cat /sys/fs/cgroup$svc/memory.max): the unit bounds bentod and the functions together"
if grep -q "the service's memory ceiling" <<<"$log"; then
	fail "bentod warned of a service memory ceiling the unit does not set: $(grep "the service's memory ceiling" <<<"$log")"
fi

cd /tmp
HOME=/tmp bento new fn --template hello >/dev/null || fail "bento new failed"
dep=$(HOME=/tmp bento deploy --no-store 127.0.0.1:8888 /tmp/fn 2>&1) || { echo "$dep" | sed 's/^/bento-vm: deploy: /'; fail "bento deploy failed"; }
inv=$(sed -n 's/.*"invocation_token": *"\([^"]*\)".*/\1/p' <<<"$dep")
shut=$(sed -n 's/.*"shutdown_token": *"\([^"]*\)".*/\1/p' <<<"$dep")
[ -n "$inv" ] && [ -n "$shut" ] || { echo "$dep" | sed 's/^/bento-vm: deploy: /'; fail "no tokens from bento deploy"; }
runner=
for _ in $(seq 100); do
	runner=$(pgrep -x bento-runner | head -1)
	[ -n "$runner" ] && break
	sleep 0.1
done
[ -n "$runner" ] || fail "no bento-runner process after the deploy"
cg=$(cat /proc/"$runner"/cgroup)
say "the container's process (pid $runner) is in $cg"
# Rootless: the container's root is bento outside, with no capabilities.
[ "$(stat -c %U /proc/"$runner")" = bento ] || fail "the container's process runs as $(stat -c %U /proc/"$runner") outside, want bento"
grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/"$runner"/status || fail "the container's process holds capabilities: $(grep CapEff /proc/"$runner"/status)"
grep -q '^CapBnd:[[:space:]]*0000000000000000$' /proc/"$runner"/status || fail "the container's bounding set is not empty: $(grep CapBnd /proc/"$runner"/status)"
[ "$(readlink /proc/"$runner"/ns/user)" != "$(readlink /proc/1/ns/user)" ] || fail "the container has no user namespace of its own"
say "the container's process runs as bento outside, in a user namespace of its own, with no capabilities"
case "$cg" in
"0::$svc/instances/"?*) ;;
*) fail "the container is in $cg, not below $svc/instances" ;;
esac
dir=/sys/fs/cgroup${cg#0::}
mem=$(cat "$dir/memory.max")
pids=$(cat "$dir/pids.max")
say "its cgroup: memory.max $mem, pids.max $pids, memory.current $(cat "$dir/memory.current")"
[ "$mem" = $((32 << 20)) ] || fail "memory.max is $mem, want the manifest's 32 MB ($((32 << 20)))"
[ "$pids" != max ] || fail "pids.max is max: no pids limit"
ls=$(bentoctl --json ls) || fail "bentoctl ls failed"
used=$(grep -o '"memory_used_bytes":[0-9]*' <<<"$ls" | head -1 | cut -d: -f2)
[ -n "$used" ] && [ "$used" -gt 0 ] || fail "bentoctl ls reads no memory for the instance: $ls"
say "bentoctl ls: the instance uses $used bytes"
# systemd runs ExecReload= (kill -HUP) in the unit's cgroup, which holds
# no process now and has controllers on for its children: systemd 252
# puts a delegated unit's control processes in OWN/.control.
systemctl reload bentod.service || fail "systemctl reload bentod failed"
for _ in $(seq 100); do
	journalctl -u bentod.service --no-pager -o cat | grep -q 'policy reloaded' && break
	sleep 0.1
done
journalctl -u bentod.service --no-pager -o cat | grep -q 'policy reloaded' || fail "no \"policy reloaded\" after systemctl reload"
systemctl is-active --quiet bentod.service || fail "bentod is not active after the reload"
[ "$(cat /proc/"$main"/cgroup)" = "0::$svc/daemon" ] || fail "bentod left its leaf on reload: $(cat /proc/"$main"/cgroup)"
kill -0 "$runner" 2>/dev/null || fail "the container ended on reload"
[ "$(stat -c %U /var/lib/bento)" = bento ] || fail "/var/lib/bento is $(stat -c %U /var/lib/bento)'s after the reload, not bento's"
say "systemctl reload bentod: policy reloaded, the container kept"

out=$(HOME=/tmp bento invoke 127.0.0.1:8888 "$inv" VM 2>&1) || { echo "$out" | sed 's/^/bento-vm: invoke: /'; fail "bento invoke failed"; }
grep -q 'hello, VM!' <<<"$out" || fail "bento invoke said: $out"
say "invoked: $(grep 'hello, VM!' <<<"$out")"
# A one-shot instance ends with its first invocation: its container and
# cgroup go.
for _ in $(seq 100); do
	[ -e "$dir" ] || break
	sleep 0.1
done
[ ! -e "$dir" ] || fail "$dir is left after the one-shot instance ended"
kill -0 "$runner" 2>/dev/null && fail "the container's process outlived its one-shot instance"
say "the one-shot instance ended: its container and cgroup are gone"

# A python function, rootless as well: Debian's CPython in the container,
# its root bento outside, no capabilities.
mkdir -p /tmp/pyfn
printf 'name = "pyfn"\nimage = "python"\nentry = "main.py"\nfunction = "main"\napis = ["send"]\n' >/tmp/pyfn/bento.toml
cat >/tmp/pyfn/main.py <<'PY'
import os
def main(name):
    caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")][0]
    api.send("hello from python, %s: uid %d in the container, capabilities %s\n" % (name, os.getuid(), caps))
PY
dep=$(HOME=/tmp bento deploy --no-store 127.0.0.1:8888 /tmp/pyfn 2>&1) || { echo "$dep" | sed 's/^/bento-vm: deploy: /'; fail "bento deploy of a python function failed"; }
inv=$(sed -n 's/.*"invocation_token": *"\([^"]*\)".*/\1/p' <<<"$dep")
py=
for _ in $(seq 100); do
	py=$(pgrep -x 'python3\.[0-9]+' | head -1)
	[ -n "$py" ] && break
	sleep 0.1
done
[ -n "$py" ] || fail "no python process after the deploy"
[ "$(stat -c %U /proc/"$py")" = bento ] || fail "the python container's process runs as $(stat -c %U /proc/"$py") outside, want bento"
grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/"$py"/status || fail "the python container's process holds capabilities"
case "$(cat /proc/"$py"/cgroup)" in "0::$svc/instances/"?*) ;; *) fail "the python container is in $(cat /proc/"$py"/cgroup)" ;; esac
out=$(HOME=/tmp bento invoke 127.0.0.1:8888 "$inv" VM 2>&1) || { echo "$out" | sed 's/^/bento-vm: invoke: /'; fail "bento invoke of the python function failed"; }
grep -q '^hello from python, VM: uid 0 in the container, capabilities 0000000000000000$' <<<"$out" || fail "the python function said: $out"
say "python: $(grep "^hello from python" <<<"$out") (outside: bento, in $svc/instances)"

systemctl stop bentod.service || fail "systemctl stop bentod failed"
[ ! -e /sys/fs/cgroup$svc ] || fail "$svc is left after the stop: $(find /sys/fs/cgroup$svc -type d | tr '\n' ' ')"
say PASSED
EOF
truncate -s 64M "$work/disk.img"
mkfs.ext4 -q -F -d "$work/disk" "$work/disk.img" 2>/dev/null ||
	{ truncate -s $(($(stat -c %s "$deb") + 64 * 1024 * 1024)) "$work/disk.img" && mkfs.ext4 -q -F -d "$work/disk" "$work/disk.img"; } ||
	fail "mkfs.ext4 -d for the test disk failed"

say "booting the VM (qemu-system-x86_64 -accel $accel, no network device)"
qemu-system-x86_64 -accel "$accel" -m 1536 -smp 1 -nodefaults -display none -no-reboot -snapshot \
	-kernel "$image.vmlinuz" -initrd "$image.initrd" \
	-append "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=0" \
	-drive file="$image",if=virtio,format=raw -drive file="$work/disk.img",if=virtio,format=raw \
	-serial file:"$work/console.log" -serial file:"$work/test.log" -nic none \
	>"$work/qemu.log" 2>&1 &
qemu_pid=$!
end=$((SECONDS + deadline))
while kill -0 "$qemu_pid" 2>/dev/null; do
	[ "$SECONDS" -lt "$end" ] || {
		cat "$work/test.log" >&2
		tail -30 "$work/console.log" >&2
		fail "the VM did not finish in $deadline s"
	}
	sleep 1
done
wait "$qemu_pid" || { cat "$work/qemu.log" >&2; fail "qemu-system-x86_64 failed"; }
qemu_pid=
grep '^bento-vm: ' "$work/test.log" | while read -r line; do say "${line#bento-vm: }"; done
if ! grep -q '^bento-vm: PASSED' "$work/test.log"; then
	grep -q '^bento-vm: ' "$work/test.log" || { tail -40 "$work/console.log" >&2; fail "the test in the VM said nothing (console above)"; }
	fail "the test in the VM failed (above)"
fi
echo "test-vm: passed (bento $(basename "$deb" .deb | cut -d_ -f2) on Debian $suite's kernel and systemd, cgroup v2, QEMU $accel)"
