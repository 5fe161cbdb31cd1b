#!/usr/bin/env bash
# seccomp-trace.sh: list the system calls bento-runner makes, to review the
# seccomp allow-list in internal/sandbox/seccomp.go.
#
#   scripts/seccomp-trace.sh          bento-runner (runnerSyscalls)
#   scripts/seccomp-trace.sh python   Debian's CPython running the python
#                                     image's driver (pythonSyscalls): the
#                                     py-* functions and the hostile one
#   KEEP=1 ...                        keep the traces (the directory is printed)
#
# Runs bentod under strace -f -ff, drives the shipped and test functions
# against it, records the host thread ids of live runners from
# /proc/PID/task, and prints, per call, how often the runner's threads
# made it and which calls failed. Needs root, strace and runc; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
command -v strace >/dev/null || apt-get install -y -qq strace >/dev/null
work=$(mktemp -d /tmp/bento-trace.XXXXXX)
[ -z "${KEEP:-}" ] || echo "traces in $work" >&2
chmod 711 "$work" # containers, in a user namespace, reach their root file system through it
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
cat >"$work/rc" <<RC
ListenAddress 127.0.0.1:17790
PolicyAddress 127.0.0.1:17791
DataDirectory $work/data
AllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch,bento,net
DestinationPolicy accept 127.0.0.1:*
RC
if [ "${1:-}" = python ]; then
	printf 'Image starlark, python\nMaxMemory 384 MB\nMaxOutput 128 MB\nMaxInFlight 600 MB\nMaxDaemonMemory 2 GB\n' >>"$work/rc"
fi
# --decode-pids=pidns: a thread's id inside its container's pid namespace
# is followed by its id here, which names its trace file.
strace -f -ff -qq --decode-pids=pidns -o "$work/tr" bin/bentod -f "$work/rc" 2>"$work/log" &
spid=$!
sleep 1
S=127.0.0.1:17790 F=functions T=e2e/testdata/functions tids=""
if [ "${1:-}" = python ]; then
	# Every thread of a python container: the processes that executed the
	# interpreter, and the threads they (and their threads) cloned.
	bin/bento run $S $F/py-hello x >/dev/null
	bin/bento run $S $F/py-periodic 3 0.1 >/dev/null
	printf 'a\nb\nstop\n' | bin/bento run -i $S $F/py-echo >/dev/null
	bin/bento run $S $F/py-largedata 3000000 >/dev/null
	bin/bento run $S $F/py-syntaxerr >/dev/null 2>&1 || true
	b=$(mktemp -d "$work/browser.XXXX"); cp $F/py-browser/* "$b"
	sed -i 's/^destinations = .*/destinations = ["accept 127.0.0.1:17791"]/' "$b/bento.toml"
	bin/bento run $S "$b" http://127.0.0.1:17791/policy 4096 >/dev/null
	h=$(mktemp -d "$work/hostile.XXXX"); cp e2e/testdata/python/hostile/main.py "$h"
	printf 'name = "hostile"\nimage = "python"\nmode = "service"\napis = ["send"]\n[resources]\ncpu_time = "2 s"\noutput = "1 MB"\n' >"$h/bento.toml"
	dep=$(bin/bento deploy $S "$h"); inv=$(sed -n 's/.*"invocation_token": "\(.*\)".*/\1/p' <<<"$dep")
	for a in fork subprocess spawn passwd environ root writeroot exec hostroot raw inet inet6 netlink connect flood cpubomb; do
		bin/bento invoke $S "$inv" $a 2>/dev/null | head -c 300 || true
	done
	# bentod first (killing strace would leave it running), then strace.
	kill "$(pgrep -P "$spid" bentod)"; sleep 1; kill %1 2>/dev/null || true; sleep 1
	: >"$work/all"
	todo=$(grep -l 'execve("/usr/bin/python3' "$work"/tr.* | sed 's/.*\.//') seen=" "
	while [ -n "$(echo $todo)" ]; do
		set -- $todo; t=$1; shift; todo="$*"
		case "$seen" in *" $t "*) continue ;; esac
		seen="$seen$t "
		[ -f "$work/tr.$t" ] || continue
		if grep -q 'execve("/usr/bin/python3' "$work/tr.$t"; then
			sed -n '/execve("\/usr\/bin\/python3/,$p' "$work/tr.$t" >"$work/one"
		else
			cp "$work/tr.$t" "$work/one"
		fi
		cat "$work/one" >>"$work/all"
		todo="$todo $(grep -oE "^clone3?\(.*= [0-9]+ /\* [0-9]+ in strace's PID NS \*/" "$work/one" | sed -E 's/.*\/\* ([0-9]+) in.*/\1/' | tr '\n' ' ' || true)"
	done
	echo "calls made by the python containers' threads (count):"
	grep -oE '^[a-z_0-9]+\(' "$work/all" | tr -d '(' | sort | uniq -c | sort -rn
	echo "failed calls:"
	grep -E '= -1 E' "$work/all" | sed -E 's/^([a-z_0-9]+)\(.*= -1 (E[A-Z]+).*/\1 \2/' | sort | uniq -c
	exit 0
fi
grab() { for d in "$work"/data/bundles/*/; do p=$(cat "$d/pid" 2>/dev/null) && tids="$tids $(ls /proc/$p/task 2>/dev/null)"; done; }
bin/bento run $S $F/hello x >/dev/null
bin/bento run --destinations 'accept 127.0.0.1:*' $S $F/browser http://127.0.0.1:17791/policy 4096 >/dev/null
dep=$(bin/bento deploy $S $F/dropbox); inv=$(sed -n 's/.*"invocation_token": "\(.*\)".*/\1/p' <<<"$dep")
head -c 3000000 /dev/urandom | bin/bento invoke -i $S "$inv" put >/dev/null
for _ in 1 2 3; do bin/bento invoke $S "$inv" get >/dev/null; done
grab
bin/bento run $S $T/counter 50 0.01 >/dev/null & sleep 0.3; grab; wait $!
for f in membomb spin storagefill flood runtimeerr; do bin/bento run $S $T/$f >/dev/null 2>&1 || true; done
kill %1; sleep 1
: >"$work/all"
for t in $tids; do [ -f "$work/tr.$t" ] && sed -n '/execve("\/bento-runner"/,$p;' "$work/tr.$t" >>"$work/all" && grep -q execve "$work/tr.$t" || cat "$work/tr.$t" >>"$work/all" 2>/dev/null || true; done
echo "calls made by bento-runner threads (count):"
grep -oE '^[a-z_0-9]+\(' "$work/all" | tr -d '(' | sort | uniq -c | sort -rn
echo "failed calls:"
grep -E '= -1 E' "$work/all" | sed -E 's/^([a-z_0-9]+)\(.*= -1 (E[A-Z]+).*/\1 \2/' | sort | uniq -c
