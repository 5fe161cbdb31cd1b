#!/usr/bin/env bash
# demo.sh: set up, then show Bento's main job on this machine, all on
# loopback: two Bento servers; a function deployed and run; Browser fetching
# and padding a page; Browser on server A storing the page in a Dropbox it
# deploys on server B; server A going away; the user fetching the page from
# B; and a greedy manifest refused with the list of what it asked for.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
B=bin
work=$(mktemp -d /tmp/bento-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

start() { # start NAME PORT POLICYPORT EXTRA
	cat >"$work/$1.rc" <<RC
Nickname $1
ListenAddress 127.0.0.1:$2
PolicyAddress 127.0.0.1:$3
DataDirectory $work/$1
$4
RC
	$B/bentod -f "$work/$1.rc" 2>"$work/$1.log" &
	pids+=($!)
	for _ in $(seq 100); do
		(exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return 0
		sleep 0.05
	done
	cat "$work/$1.log"
	exit 1
}
show() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

start A 18888 18889 $'AllowAPI send,recv,log,time,sleep,random,storage,exit,http.fetch,bento\nDestinationPolicy accept 127.0.0.1:*'
start B 28888 28889 ""
A=127.0.0.1:18888
Bsrv=127.0.0.1:28888

show "bento policy $A        # what server A lets functions do"
$B/bento policy $A

show "bento run $A functions/hello Alice"
$B/bento run $A functions/hello Alice

# Server B's policy document is a real page on loopback to fetch.
page=http://127.0.0.1:28889/policy
show "bento run --destinations 'accept 127.0.0.1:*' $A functions/browser $page 4096 | wc -c"
$B/bento run --destinations 'accept 127.0.0.1:*' $A functions/browser $page 4096 >"$work/page"
echo "$(wc -c <"$work/page") bytes (header $(head -c 16 "$work/page"), padded to a multiple of 4096)"

show "bento deploy $A functions/browser-dropbox --destinations 'accept 127.0.0.1:*'"
$B/bento deploy $A functions/browser-dropbox --destinations 'accept 127.0.0.1:*' | tee "$work/dep.json"
inv=$(sed -n 's/.*"invocation_token": "\(.*\)".*/\1/p' "$work/dep.json")
show "bento invoke $A <invocation token> $page 4096 $Bsrv 1   # Browser on A, Dropbox on B"
$B/bento invoke $A "$inv" $page 4096 $Bsrv 1 | tee "$work/box.json"
box=$(sed -n 's/.*"invocation_token":"\([^"]*\)".*/\1/p' "$work/box.json")

show "server A goes away"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
echo "A stopped"

show "bento invoke $Bsrv <dropbox token> get | cmp - <page fetched directly>"
$B/bento invoke $Bsrv "$box" get >"$work/fromB"
cmp "$work/fromB" "$work/page" && echo "the page from B's Dropbox is byte-for-byte the page Browser fetched ($(wc -c <"$work/fromB") bytes)"
show "bento invoke $Bsrv <dropbox token> get    # max_gets was 1: the data is gone"
$B/bento invoke $Bsrv "$box" get || echo "(exit status $?)"

cat >"$work/greedy.toml" <<'T'
name = "greedy"
apis = ["send", "http.fetch"]
destinations = ["accept *:443"]
[resources]
memory = "1 GB"
lifetime = "1 day"
T
mkdir -p "$work/greedy" && mv "$work/greedy.toml" "$work/greedy/bento.toml" && echo 'def main(): return 1' >"$work/greedy/main.star"
show "bento deploy $Bsrv greedy/     # asks for more than B allows"
$B/bento deploy $Bsrv "$work/greedy" || echo "(exit status $?)"
echo
echo "demo finished"
