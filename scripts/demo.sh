#!/usr/bin/env bash
# demo.sh: set up, then show Bento's main job over a private Tor network on
# this machine (Debian's tor: 3 directory authorities, 2 exits, 2 middle
# relays and a client, inside a network namespace that has only loopback).
#
# Two Bento servers run beside the two exit relays, each published as an
# onion service. The user, through the Tor client: reads a server's policy;
# runs a function; runs Browser, which fetches a page through a Tor exit and
# pads it; runs Browser on server A storing the page in a Dropbox it deploys
# on server B, over Tor; server A goes away; the user fetches the page from
# B; a function's attempt to reconfigure the relay through the control port
# is refused; a LoadBalancer onion service spreads clients over three
# Replica functions; a greedy manifest is refused with the list of what it
# asked.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PRIVNET_SOCKS:-}" ]; then
	bash scripts/setup.sh
	keys=${BENTO_DEMO_KEYS:-/tmp/bento-demo-tor}
	echo "starting a private Tor network (keys kept in $keys)..."
	exec bin/privnet run "$keys" -- bash "$0"
fi

B=bin
work=$(mktemp -d /tmp/bento-demo.XXXXXX)
chmod 711 "$work" # containers, in a user namespace, reach their root file system through it
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

start() { # start NAME PORT POLICYPORT EXITNUMBER
	local socks control cookie
	socks=PRIVNET_EXIT$4_SOCKS control=PRIVNET_EXIT$4_CONTROL cookie=PRIVNET_EXIT$4_COOKIE
	cat >"$work/$1.rc" <<RC
Nickname $1
ListenAddress 127.0.0.1:$2
PolicyAddress 127.0.0.1:$3
DataDirectory $work/$1
TorControlPort ${!control}
TorCookieFile ${!cookie}
TorSocksPort ${!socks}
OnionService 1
AllowAPI send,recv,log,time,sleep,random,storage,exit,tor.fetch,tor.control,tor.stream,bento
RC
	$B/bentod -f "$work/$1.rc" 2>"$work/$1.log" &
	pids+=($!)
	for _ in $(seq 300); do
		[ -s "$work/$1/onion_hostname" ] && return 0
		sleep 0.1
	done
	cat "$work/$1.log"
	exit 1
}
show() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
bt() { # the CLI through the Tor client, retrying while a new onion service's descriptor spreads
	local i rc=0
	for i in $(seq 20); do
		rc=0
		$B/bento --tor-socks "$PRIVNET_SOCKS" "$@" 2>"$work/bento.err" || rc=$?
		[ "$rc" = 4 ] || break
		sleep 1
	done
	cat "$work/bento.err" >&2
	return "$rc"
}

start A 18888 18889 0
start B 28888 28889 1
A=$(cat "$work/A/onion_hostname"):18888
Bsrv=$(cat "$work/B/onion_hostname"):28888
echo "server A: $A (beside exit0)"
echo "server B: $Bsrv (beside exit1)"

show "bento --tor-socks \$PRIVNET_SOCKS policy $A"
bt policy "$A"

show "bento --tor-socks … run $A functions/hello Alice"
bt run "$A" functions/hello Alice

# Server B's policy document is a real page on loopback; Browser fetches it
# through a Tor exit.
page=http://127.0.0.1:28889/policy
show "bento --tor-socks … run $A functions/browser-tor $page 4096 tor | wc -c"
bt run "$A" functions/browser-tor $page 4096 tor >"$work/page"
echo "$(wc -c <"$work/page") bytes (header $(head -c 16 "$work/page"), padded to a multiple of 4096)"

show "bento --tor-socks … run $A functions/browser-dropbox-tor $page 4096 $Bsrv 1 tor"
bt run "$A" functions/browser-dropbox-tor $page 4096 "$Bsrv" 1 tor | tee "$work/box.json"
box=$(sed -n 's/.*"invocation_token":"\([^"]*\)".*/\1/p' "$work/box.json")

show "server A goes away (its onion service with it)"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
echo "A stopped"

show "bento --tor-socks … invoke $Bsrv <dropbox token> get | cmp - <page fetched before>"
bt invoke "$Bsrv" "$box" get >"$work/fromB"
cmp "$work/fromB" "$work/page" && echo "the page from B's Dropbox is byte-for-byte the page Browser fetched ($(wc -c <"$work/fromB") bytes)"
show "bento --tor-socks … invoke $Bsrv <dropbox token> get    # max_gets was 1: the data is gone"
bt invoke "$Bsrv" "$box" get || echo "(exit status $?)"

show "a function asks tor's control port, through B's firewall: GETINFO version, EXTENDCIRCUIT 0, SETCONF, SIGNAL HALT"
bt run "$Bsrv" e2e/testdata/functions/torctl '["GETINFO version","EXTENDCIRCUIT 0","SETCONF ExitPolicy=\"accept *:*\"","SIGNAL HALT"]'

show "three Replica functions on B and a LoadBalancer in front of them, each an onion service of its own"
announce() { # announce NAME ARGS...: run a long-lived function in the background, print its first output line
	local name=$1
	shift
	$B/bento --tor-socks "$PRIVNET_SOCKS" run "$Bsrv" "$@" >"$work/$name.out" 2>"$work/$name.err" &
	pids+=($!)
	for _ in $(seq 300); do
		[ -n "$(head -1 "$work/$name.out" 2>/dev/null)" ] && break
		sleep 0.1
	done
	head -1 "$work/$name.out"
}
r0=$(announce r0 functions/replica r0); r1=$(announce r1 functions/replica r1); r2=$(announce r2 functions/replica r2)
echo "replicas: $r0 $r1 $r2"
lb=$(announce lb functions/loadbalancer "[\"$r0\",\"$r1\",\"$r2\"]")
echo "load balancer: $lb"
show "six clients fetch http://$lb/ through Tor"
for i in 1 2 3 4 5 6; do
	printf 'client %d: ' "$i"
	curl -s -m 60 --socks5-hostname "$PRIVNET_SOCKS" --proxy-user "client$i:x" "http://$lb/" || echo "(failed)"
done

cat >"$work/greedy.toml" <<'T'
name = "greedy"
apis = ["send", "http.fetch"]
destinations = ["accept *:443"]
[resources]
memory = "1 GB"
lifetime = "1 day"
T
mkdir -p "$work/greedy" && mv "$work/greedy.toml" "$work/greedy/bento.toml" && echo 'def main(): return 1' >"$work/greedy/main.star"
show "bento --tor-socks … deploy $Bsrv greedy/     # asks for more than B allows"
bt deploy "$Bsrv" "$work/greedy" || echo "(exit status $?)"
echo
echo "demo finished"
