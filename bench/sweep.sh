#!/usr/bin/env bash
# sweep.sh: the open-loop rate at which a server's p99 latency crosses a
# threshold (10 ms). It runs `busyapi bench --rate R` at rising rates until
# p99 goes above P99_MS or the run fails (the rate not achieved, errors),
# then halves the interval between the last good rate and the first bad
# one BISECT times.
#
#   bash bench/sweep.sh                                   # busyapi, default fsync mode
#   SERVER=busyapi-memory bash bench/sweep.sh
#   SERVER=empty START=50000 STEP=50000 MAX=400000 bash bench/sweep.sh
#   CONNECTIONS=10000 START=10000 STEP=2500 bash bench/sweep.sh
#   EXTRA='--pipeline 16' bash bench/sweep.sh
#   EXTRA='--batch 100' START=1000 STEP=1000 bash bench/sweep.sh   # rates are batches/s
#   URL=http://127.0.0.1:3000 bash bench/sweep.sh         # a server already running
#
# The server (unless URL is set) is started here once for the whole sweep,
# pinned to CPU $SERVER_CPU (default 0) on port 18085, with a fresh data
# directory; busyapi bench runs pinned to CPU $LOAD_CPU (default 1).
# Environment:
#   SERVER       busyapi (default), busyapi-memory, empty or nethttp
#   URL          measure this server instead of starting one
#   CONNECTIONS  keep-alive connections (default 1000)
#   START, STEP  first rate and increment, req/s (default 5000 and 5000)
#   MAX          highest rate tried (default 500000)
#   BISECT       halvings between the last good and first bad rate (default 3)
#   P99_MS       the p99 threshold in ms (default 10)
#   DURATION     measured time per rate (default 10s); WARMUP (default 2s)
#   EXTRA        more busyapi bench flags, e.g. '--pipeline 16' or '--batch 100'
#   BUSYAPI_FLAGS  more flags for the busyapi server
#   KEEP=DIR     keep each run's JSON in DIR
# Prints one line per rate and, at the end, the highest rate with
# p99 <= P99_MS that passed. Exits 0 once the crossing is found, 1 if the
# server never crossed below MAX, on a build or start failure, or if even
# START is too fast.
set -euo pipefail

SERVER=${SERVER:-busyapi}
CONNECTIONS=${CONNECTIONS:-1000}
START=${START:-5000}
STEP=${STEP:-5000}
MAX=${MAX:-500000}
BISECT=${BISECT:-3}
P99_MS=${P99_MS:-10}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
EXTRA=${EXTRA:-}
LOAD_CPU=${LOAD_CPU:-1}
port=18085

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go taskset awk
if [[ -n ${URL:-} ]]; then
	go build -o "$tmp/busyapi" .
	target=$URL
else
	build
	# shellcheck disable=SC2046 # the command is a list of words
	start_server "$SERVER" $port $(server_cmd "$SERVER" $port)
	target=http://127.0.0.1:$port
fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "sweep: ${URL:-$SERVER} at $target, $CONNECTIONS connections, $DURATION per rate after $WARMUP warmup${EXTRA:+, $EXTRA}; p99 threshold $P99_MS ms"
printf '%10s %10s %9s %9s %9s %9s  %s\n' rate achieved p50_ms p99_ms p99.9_ms max_ms result

# measure RATE: run busyapi bench at RATE; print its line; succeed if it
# passed with p99 <= P99_MS.
measure() {
	local rate=$1 out="$tmp/rate-$1.json" pid_flag=()
	[[ -n $server_pid ]] && pid_flag=(--pid "$server_pid")
	# shellcheck disable=SC2086 # EXTRA is a list of flags
	taskset -c "$LOAD_CPU" "$tmp/busyapi" bench --url "$target" --rate "$rate" --connections "$CONNECTIONS" \
		--duration "$DURATION" --warmup "$WARMUP" --progress off --json "${pid_flag[@]}" $EXTRA >"$out" 2>"$tmp/err" || true
	if [[ ! -s $out ]]; then
		echo "sweep.sh: busyapi bench did not run:" >&2
		cat "$tmp/err" >&2
		exit 1
	fi
	[[ -n ${KEEP:-} ]] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
	local ok p99
	ok=$(jok "$out")
	p99=$(jnum "$out" p99 latency_ms)
	local verdict=$ok
	if [[ $ok == PASS ]] && awk -v p="$p99" -v t="$P99_MS" 'BEGIN { exit !(p > t) }'; then
		verdict="p99 > $P99_MS ms"
	fi
	printf '%10s %10.0f %9.3f %9.3f %9.3f %9.3f  %s\n' "$rate" "$(jnum "$out" achieved_rate)" \
		"$(jnum "$out" p50 latency_ms)" "$p99" "$(jnum "$out" p99_9 latency_ms)" "$(jnum "$out" max latency_ms)" "$verdict"
	[[ $verdict == PASS ]]
}

good= bad=
for ((rate = START; rate <= MAX; rate += STEP)); do
	if measure "$rate"; then
		good=$rate
	else
		bad=$rate
		break
	fi
done
if [[ -z $bad ]]; then
	echo "p99 stayed at or below $P99_MS ms up to $good req/s (MAX=$MAX): raise MAX"
	exit 1
fi
if [[ -z $good ]]; then
	echo "already at START=$START req/s p99 is above $P99_MS ms or the run failed: lower START"
	exit 1
fi
for ((i = 0; i < BISECT; i++)); do
	mid=$(((good + bad) / 2))
	((mid == good || mid == bad)) && break
	if measure "$mid"; then good=$mid; else bad=$mid; fi
done
echo "p99 crosses $P99_MS ms between $good and $bad req/s: highest rate passing with p99 <= $P99_MS ms: $good req/s"
