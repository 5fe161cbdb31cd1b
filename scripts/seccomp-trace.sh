#!/usr/bin/env bash
# seccomp-trace.sh: list the system calls bento-runner makes, to review the
# seccomp allow-list in internal/sandbox/seccomp.go.
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
chmod 711 "$work" # containers, in a user namespace, reach their root file system through it
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/rc" <<RC
ListenAddress 127.0.0.1:17790
PolicyAddress 127.0.0.1:17791
DataDirectory $work/data
AllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch,bento
DestinationPolicy accept 127.0.0.1:*
RC
strace -f -ff -qq -o "$work/tr" bin/bentod -f "$work/rc" 2>"$work/log" &
sleep 1
S=127.0.0.1:17790 F=functions T=e2e/testdata/functions tids=""
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
