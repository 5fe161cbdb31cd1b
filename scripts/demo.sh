#!/usr/bin/env bash
# demo.sh: set up, then show Bento's main job over a private Tor network on
# this machine (Debian's tor: 3 directory authorities, 2 exits, 2 middle
# relays and a client, inside a network namespace that has only loopback).
#
# Two Bento servers run beside the two exit relays, each published as an
# onion service and announced in the directory of boxes. The user, through
# the Tor client: reads a server's policy; runs a function; lists the boxes
# the relays announce and runs a function on one chosen at random; runs
# Browser, which fetches a page through a Tor exit and
# pads it; runs Browser on server A storing the page in a Dropbox it deploys
# on server B, over Tor; server A goes away; the user fetches the page from
# B; a function's attempt to reconfigure the relay through the control port
# is refused; a LoadBalancer onion service spreads clients over three
# Replica functions; a greedy manifest is refused with the list of what it
# asked. Last, a dust mote (a relay and a box that end) is spawned from its
# template, runs a function, and is gone at its end.
#
# Every step checks its own result: the demo stops at the first that
# fails, says which and why, and exits 1. DEMO_BREAK=STEP breaks one step's
# check on purpose (the test command uses it to prove the checks bite).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PRIVNET_SOCKS:-}" ]; then
	bash scripts/setup.sh --test # curl
	keys=${BENTO_DEMO_KEYS:-/tmp/bento-demo-tor}
	echo "starting a private Tor network (keys kept in $keys)..."
	exec bin/privnet run "$keys" -- bash "$0"
fi

B=bin
# The demo leaves no tokens on disk (bento deploy and run keep them in
# ~/.local/state/bento otherwise).
export BENTO_NO_STORE=1
work=$(mktemp -d /tmp/bento-demo.XXXXXX)
chmod 711 "$work" # containers, in a user namespace, reach their root file system through it
pids=()
current=setup
mote_name=
cleanup() {
	if [ -n "$mote_name" ]; then
		$B/bento dust down "$mote_name" --state "$work/motes" >/dev/null 2>&1 || true
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

fail() {
	printf '\ndemo: step %s failed: %s\n' "$current" "$*" >&2
	for f in "$work"/*.log; do
		[ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
	done
	exit 1
}
step() { # step NAME TITLE: start a step
	current=$1
	printf '\n\033[1m$ %s\033[0m\n' "$2"
}
# check WHAT EXPECTED ACTUAL: the step's result must be what it expects.
check() {
	local what=$1 want=$2 got=$3
	if [ "${DEMO_BREAK:-}" = "$current" ]; then
		want="$want (broken on purpose by DEMO_BREAK)"
	fi
	[ "$got" = "$want" ] || fail "$what: want '$want', got '$got'"
}
contains() { # contains WHAT NEEDLE HAYSTACK
	local what=$1 needle=$2 hay=$3
	if [ "${DEMO_BREAK:-}" = "$current" ]; then
		needle="$needle (broken on purpose by DEMO_BREAK)"
	fi
	case "$hay" in *"$needle"*) ;; *) fail "$what: '$needle' not in '${hay:0:400}'" ;; esac
}
# wait_for WHAT SECONDS CMD...: readiness with a deadline that fails loudly.
wait_for() {
	local what=$1 secs=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		"$@" && return 0
		sleep 0.1
	done
	fail "$what: not ready after $secs s"
}

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
# List this box in the directory: the relay's ContactInfo points at it.
BoxAnnounce 1
AllowAPI send,recv,log,time,sleep,random,storage,exit,tor.fetch,tor.control,tor.stream,bento
# Functions reach onion services, and (through an exit) this demo's web page.
DestinationPolicy accept *.onion:*, accept 127.0.0.1:28889
# The operator's ways in: bentoctl's socket, and Prometheus metrics.
ControlSocket $work/$1.ctl
MetricsPort 127.0.0.1:$(($2 + 2))
MetricsPortPolicy accept 127.0.0.1
RC
	$B/bentod -f "$work/$1.rc" 2>"$work/$1.log" &
	pids+=($!)
	wait_for "bentod $1's onion service" 60 test -s "$work/$1/onion_hostname"
}
bt() { # the CLI through the Tor client, retrying while a new onion service's descriptor spreads
	local i rc=0
	for i in $(seq 20); do
		rc=0
		$B/bento --tor-socks "$PRIVNET_SOCKS" "$@" 2>"$work/bento.err" || rc=$?
		[ "$rc" = 4 ] || break
		sleep 1
	done
	grep -v '^bento: session .* started' "$work/bento.err" >&2 || true
	return "$rc"
}

step servers "two Bento servers beside the exit relays, each an onion service"
start A 18888 18889 0
start B 28888 28889 1
A=$(cat "$work/A/onion_hostname"):18888
Bsrv=$(cat "$work/B/onion_hostname"):28888
echo "server A: $A (beside exit0)"
echo "server B: $Bsrv (beside exit1)"

step policy "bento --tor-socks \$PRIVNET_SOCKS policy $A"
out=$(bt policy "$A") || fail "bento policy exited $?"
echo "$out"
contains "the policy names its server" "server       A" "$out"

step hello "bento --tor-socks … run $A functions/hello Alice"
out=$(bt run "$A" functions/hello Alice) || fail "bento run exited $?"
echo "$out"
check "hello's first line" "hello, Alice!" "$(head -1 <<<"$out")"

step boxes "bento --tor-socks … boxes --tor-control \$PRIVNET_CONTROL   # the boxes the Tor network's relays announce"
listed() {
	out=$($B/bento --tor-socks "$PRIVNET_SOCKS" boxes --tor-control "$PRIVNET_CONTROL" --tor-cookie "$PRIVNET_COOKIE" 2>&1) || return 1
	case "$out" in *"$A"*"$Bsrv"* | *"$Bsrv"*"$A"*) return 0 ;; esac
	return 1
}
# An announcement travels from the relay's descriptor through the
# authorities' consensus to the client's tor: about a minute here.
wait_for "both boxes in the directory" 180 listed
echo "$out"
contains "A listed, beside its relay" "$A" "$out"
contains "B listed" "$Bsrv" "$out"

step choose "bento --tor-socks … run --choose functions/hello Bob   # a box chosen at random, weighted by capacity"
out=$(bt run --choose --tor-control "$PRIVNET_CONTROL" --tor-cookie "$PRIVNET_COOKIE" functions/hello Bob 2>"$work/choose.err") || fail "bento run --choose exited $?"
cat "$work/choose.err"
echo "$out"
contains "the chosen box" "chose box " "$(cat "$work/choose.err")"
check "hello's first line" "hello, Bob!" "$(head -1 <<<"$out")"

# Server B's policy document is a real page on loopback; Browser fetches it
# through a Tor exit.
page=http://127.0.0.1:28889/policy
step browser "bento --tor-socks … run --destinations 'accept 127.0.0.1:28889' $A functions/browser-tor $page 4096 tor | wc -c"
bt run --destinations "accept 127.0.0.1:28889" "$A" functions/browser-tor $page 4096 tor >"$work/page" || fail "bento run exited $?"
size=$(wc -c <"$work/page")
len=$((10#$(head -c 16 "$work/page")))
echo "$size bytes (header $(head -c 16 "$work/page"), padded to a multiple of 4096)"
check "padding to a multiple of 4096" 0 $((size % 4096))
check "the page inside" 1 $((len > 0 && len + 16 <= size))
contains "the page is B's policy" '"nickname": "B"' "$(tail -c +17 "$work/page" | head -c "$len")"

# The Dropbox is deployed from A's function, through A's relay: B's onion
# service must be reachable from there first (its descriptor spreads).
reaches_b() { $B/bento --tor-socks "$PRIVNET_EXIT0_SOCKS" policy "$Bsrv" >/dev/null 2>&1; }
wait_for "B's onion service reachable through A's relay" 180 reaches_b
step dropbox "bento --tor-socks … run $A functions/browser-dropbox-tor $page 4096 $Bsrv 1 tor"
bt run --destinations "accept 127.0.0.1:28889, accept *.onion:*" "$A" functions/browser-dropbox-tor $page 4096 "$Bsrv" 1 tor >"$work/box.json" || fail "bento run exited $?"
cat "$work/box.json"
box=$(sed -n 's/.*"invocation_token":"\([^"]*\)".*/\1/p' "$work/box.json")
[ -n "$box" ] || fail "no invocation token in the output"
contains "the Dropbox lives on B" "\"server\":\"$Bsrv\"" "$(cat "$work/box.json")"

step stop-a "server A goes away (its onion service with it)"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
echo "A stopped"

step get "bento --tor-socks … invoke $Bsrv <dropbox token> get | cmp - <page fetched before>"
bt invoke "$Bsrv" "$box" get >"$work/fromB" || fail "bento invoke exited $?"
cmp -s "$work/fromB" "$work/page" || fail "the page from B's Dropbox differs from the page Browser fetched"
check "the page from B's Dropbox, byte for byte" "$(wc -c <"$work/page")" "$(wc -c <"$work/fromB")"
echo "the page from B's Dropbox is byte-for-byte the page Browser fetched ($(wc -c <"$work/fromB") bytes)"

step gone "bento --tor-socks … invoke $Bsrv <dropbox token> get    # max_gets was 1: the data is gone"
rc=0
bt invoke "$Bsrv" "$box" get || rc=$?
echo "(exit status $rc)"
check "exit status of a get after max_gets" 5 "$rc"

step firewall "a function asks tor's control port, through B's firewall: GETINFO version, EXTENDCIRCUIT 0, SETCONF, SIGNAL HALT"
out=$(bt run --destinations "accept *.onion:*" "$Bsrv" e2e/testdata/functions/torctl '["GETINFO version","EXTENDCIRCUIT 0","SETCONF ExitPolicy=\"accept *:*\"","SIGNAL HALT"]') || fail "bento run exited $?"
echo "$out"
statuses=$(grep -o '\[[0-9][0-9][0-9],' <<<"$out" | tr -d '[,' | tr '\n' ' ')
check "the firewall's answers (GETINFO, EXTENDCIRCUIT allowed; SETCONF, SIGNAL refused)" "250 250 510 510 " "$statuses"

step loadbalancer "three Replica functions on B and a LoadBalancer in front of them, each an onion service of its own"
announce() { # announce NAME ARGS...: run a long-lived function in the background; its first output line is its address
	# A deploy through a fresh onion circuit can stall on a loaded
	# machine: a run that gives no address in 120 s is ended (by its PID:
	# bento run then shuts its instance down) and tried again, three
	# times at most.
	local name=$1 attempt pid
	shift
	for attempt in 1 2 3; do
		$B/bento --tor-socks "$PRIVNET_SOCKS" run "$@" >"$work/$name.out" 2>"$work/$name.log" &
		pid=$!
		for _ in $(seq 1200); do
			if grep -q . "$work/$name.out"; then
				head -1 "$work/$name.out"
				return 0
			fi
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		echo "demo: $name gave no address (try $attempt of 3): $(tail -1 "$work/$name.log")" >&2
	done
	fail "$name's onion address: not ready after three tries"
}
r0=$(announce r0 "$Bsrv" functions/replica r0)
r1=$(announce r1 "$Bsrv" functions/replica r1)
r2=$(announce r2 "$Bsrv" functions/replica r2)
echo "replicas: $r0 $r1 $r2"
for r in "$r0" "$r1" "$r2"; do contains "a replica's address" ".onion:80" "$r"; done
# A new onion service is reachable once its descriptor has spread: until
# then the load balancer's first dial to it fails and leaves it out for 30
# s. Each replica answers through B's relay (the tor the load balancer
# dials through) before the load balancer starts.
answers() { # answers REPLICA NAME: the replica serves its name through Tor
	[ "$(curl -s -m 30 --socks5-hostname "$PRIVNET_EXIT1_SOCKS" --proxy-user "probe-$2:x" "http://$1/")" = "$2" ]
}
wait_for "replica r0 reachable through Tor" 180 answers "$r0" r0
wait_for "replica r1 reachable through Tor" 180 answers "$r1" r1
wait_for "replica r2 reachable through Tor" 180 answers "$r2" r2
lb=$(announce lb "$Bsrv" functions/loadbalancer "[\"$r0\",\"$r1\",\"$r2\"]")
echo "load balancer: $lb"
contains "the load balancer's address" ".onion:80" "$lb"

step clients "six clients fetch http://$lb/ through Tor"
served=""
for i in 1 2 3 4 5 6; do
	answer=""
	for attempt in 1 2 3; do # a fresh onion circuit can stall on a loaded machine: retry
		answer=$(curl -s -m 60 --socks5-hostname "$PRIVNET_SOCKS" --proxy-user "client$i-$attempt:x" "http://$lb/") && [ -n "$answer" ] && break
		answer=""
	done
	printf 'client %d: %s\n' "$i" "${answer:-(failed)}"
	[ -n "$answer" ] || fail "client $i got no answer from the load balancer"
	served="$served $answer"
done
distinct=$(tr ' ' '\n' <<<"$served" | grep -o 'r[0-2]' | sort -u | wc -l)
check "replicas that served the six clients" 3 "$distinct"

step operator "bentoctl -s … ls; curl …:28890/metrics; bentoctl end <the load balancer> 'demo: the operator ends it'   # B's operator"
ls=$($B/bentoctl -s "$work/B.ctl" ls) || fail "bentoctl ls exited $?"
echo "$ls"
check "replicas bentoctl lists on B" 3 "$(grep -c ' replica .* running ' <<<"$ls")"
check "load balancers bentoctl lists on B" 1 "$(grep -c ' loadbalancer .* running ' <<<"$ls")"
running=$(curl -s -m 10 "http://127.0.0.1:28890/metrics" | grep '^bento_instances{kind="running"}' | awk '{print $2}')
echo "metrics: bento_instances{kind=\"running\"} $running"
[ "${running:-0}" -ge 4 ] || fail "B's metrics count ${running:-no} running instances, want at least 4"
lbid=$(grep ' loadbalancer ' <<<"$ls" | awk '{print $1}')
$B/bentoctl -s "$work/B.ctl" end "$lbid" "demo: the operator ends it" || fail "bentoctl end exited $?"
wait_for "the load balancer's client told why" 30 grep -q "ended by the box's operator: demo: the operator ends it" "$work/lb.log"
grep -o "ended by the box's operator: .*" "$work/lb.log" | head -1

cat >"$work/greedy.toml" <<'T'
name = "greedy"
apis = ["send", "http.fetch"]
destinations = ["accept *:443"]
[resources]
memory = "1 GB"
lifetime = "1 day"
T
mkdir -p "$work/greedy" && mv "$work/greedy.toml" "$work/greedy/bento.toml" && echo 'def main(): return 1' >"$work/greedy/main.star"
step greedy "bento --tor-socks … deploy $Bsrv greedy/     # asks for more than B allows"
rc=0
bt deploy "$Bsrv" "$work/greedy" 2>"$work/greedy.err" || rc=$?
cat "$work/greedy.err"
echo "(exit status $rc)"
check "exit status of a refused manifest" 3 "$rc"
contains "the refusal lists the memory asked" "resources.memory: asks 1 GB" "$(cat "$work/greedy.err")"

# The mote comes last, after every other step that uses Tor: once it is
# gone its relay stays in the private network's consensus (its authorities
# do not test reachability), a hop and an HSDir that fail, and CI runs saw
# the load balancer's clients fail when a mote spawned earlier ended in
# the middle of them.
step mote "bento dust up --template templates/mote.toml --network-torrc \$PRIVNET_JOIN_TORRC --lifetime 60s --drain 15s   # a dust mote: a relay and a box that end"
out=$($B/bento dust up --template templates/mote.toml --network-torrc "$PRIVNET_JOIN_TORRC" --lifetime 60s --drain 15s --state "$work/motes") || fail "bento dust up exited $?"
echo "$out"
mote_name=$(sed -n 's/^mote \([^ ]*\) is up$/\1/p' <<<"$out")
M=$(sed -n 's/^  box *//p' <<<"$out")
contains "the mote is up, with its box's address" ".onion:" "$M"
contains "the mote runs in a network namespace of its own" "network namespace net:[" "$out"

step mote-hello "bento --tor-socks … run $M functions/hello Carol   # on the mote"
out=$(bt run "$M" functions/hello Carol) || fail "bento run on the mote exited $?"
echo "$out"
check "hello's first line" "hello, Carol!" "$(head -1 <<<"$out")"

step mote-end "the mote's end: its box ends its functions, tor and bentod stop, nothing is left   # bento dust ls"
mote_gone() { [ ! -e "$work/motes/$mote_name" ] && ! $B/bento dust ls --state "$work/motes" | grep -q "$mote_name"; }
wait_for "the mote gone after its end" 150 mote_gone
$B/bento dust ls --state "$work/motes"
check "processes left by the mote" 0 "$(pgrep -f "$work/motes" | wc -l)"
mote_name=

echo
echo "demo finished"
