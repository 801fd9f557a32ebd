#!/usr/bin/env bash
# generator.sh: is `busyapi bench` fast enough? It drives an empty fasthttp
# handler (bench/empty) from one core, next to wrk on the same core: plain
# and 16-deep pipelined, closed loop, and open loop at a fixed rate. The
# load generator must not be the bottleneck: from one core it should drive
# at least 100,000 plain req/s, and more pipelined.
#
#   bash bench/generator.sh                  # from the repo root
#   DURATION=5s bash bench/generator.sh
#   OPEN_RATE=150000 CONNECTIONS=128 bash bench/generator.sh
#
# bench/empty runs pinned to CPU $SERVER_CPU (default 0), each generator
# pinned to CPU $LOAD_CPU (default 1), so each has exactly one core. The
# table gives req/s and each generator's CPU use in percent of its core
# (below 100% means it had time to spare, so the server was the limit).
# Environment:
#   DURATION     per run, e.g. 30s or 1m (default 5s; busyapi bench adds a
#                1s warmup)
#   CONNECTIONS  keep-alive connections (default 64)
#   PIPELINE     pipelining depth of the pipelined runs (default 16; wrk's
#                bench/pipeline.lua is fixed at 16)
#   OPEN_RATE    req/s of the open-loop run (default 100000)
#   SERVER_CPU, LOAD_CPU
# Port 18086 must be free. Exits non-zero if a build or a run fails.
set -euo pipefail

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
PIPELINE=${PIPELINE:-16}
OPEN_RATE=${OPEN_RATE:-100000}
LOAD_CPU=${LOAD_CPU:-1}
port=18086

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go wrk taskset awk
build

url=http://127.0.0.1:$port
# shellcheck disable=SC2046 # the command is a list of words
start_server empty $port $(server_cmd empty $port)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# bench NAME ARGS...: run busyapi bench on LOAD_CPU; print req/s, CPU% and
# p99 ms.
bench() {
	local name=$1 out="$tmp/$1.json"
	shift
	if ! taskset -c "$LOAD_CPU" "$tmp/busyapi" bench --url "$url" --connections "$CONNECTIONS" \
		--duration "$DURATION" --warmup 1s --progress off --json "$@" >"$out" 2>"$tmp/$name.err"; then
		echo "generator.sh: busyapi bench $* failed:" >&2
		cat "$out" "$tmp/$name.err" >&2
		exit 1
	fi
	printf '%.0f %.0f %.2fms' "$(jnum "$out" achieved_rate)" "$(jnum "$out" loadgen_percent)" "$(jnum "$out" p99 latency_ms)"
}

# wrk_run SCRIPT: run wrk on LOAD_CPU; print req/s and CPU% (from the
# shell's times of its children).
wrk_run() {
	local out="$tmp/wrk.out" secs cpu
	(
		run_wrk empty -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$1" "$url/api/usages" >"$out"
		times >"$tmp/wrk.times"
	)
	# DURATION in seconds: 30s, 2m or 1m30s.
	secs=$(awk '{ t = 0; while (match($0, /^[0-9.]+[hms]/)) {
		v = substr($0, 1, RLENGTH - 1); u = substr($0, RLENGTH, 1)
		t += v * (u == "h" ? 3600 : u == "m" ? 60 : 1); $0 = substr($0, RLENGTH + 1) } print t }' <<<"$DURATION")
	# times prints the children's user and system time on its second line.
	cpu=$(awk -v d="$secs" 'NR == 2 {
		split($1, u, /[ms]/); split($2, s, /[ms]/)
		printf "%.0f", 100 * (u[1] * 60 + u[2] + s[1] * 60 + s[2]) / d }' "$tmp/wrk.times")
	printf '%.0f %s %s' "$(awk '/^Requests\/sec:/ { print $2 }' "$out")" "$cpu" "$(awk '$1 == "99%" { print $2 }' "$out")"
}

row() { # LABEL "REQ/S CPU P99"
	local r c p
	read -r r c p <<<"$2"
	printf '%-44s %12s %8s%% %10s\n' "$1" "$r" "$c" "$p"
}

plain=$(bench plain)
wrkplain=$(wrk_run bench/post.lua)
piped=$(bench piped --pipeline "$PIPELINE")
wrkpiped=$(wrk_run bench/pipeline.lua)
open=$(bench open --rate "$OPEN_RATE")
openok=$(jok "$tmp/open.json")
lag=$(printf '%.2f' "$(jnum "$tmp/open.json" p99 generator_lag_ms)")

echo
echo "against bench/empty on CPU ${SERVER_CPU:-0}, generator on CPU $LOAD_CPU, $CONNECTIONS connections, $DURATION"
printf '%-44s %12s %9s %10s\n' generator req/s cpu p99
row "busyapi bench, closed loop" "$plain"
row "wrk -s bench/post.lua" "$wrkplain"
row "busyapi bench --pipeline $PIPELINE" "$piped"
row "wrk -s bench/pipeline.lua (16)" "$wrkpiped"
row "busyapi bench --rate $OPEN_RATE (open loop)" "$open"
echo "open loop at $OPEN_RATE req/s: $openok; generator lag p99 $lag ms (due time to write, on idle connections)"
