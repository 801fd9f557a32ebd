#!/usr/bin/env bash
# compare.sh: closed-loop throughput of busyapi against its baselines, an
# empty fasthttp handler (bench/empty: bare; with busyapi's timeouts; and
# with those timeouts answering busyapi's 201 response from constants) and
# net/http + encoding/json (bench/nethttp), each with wrk, plain and 16-deep
# pipelined.
#
#   bash bench/compare.sh                 # from the repo root
#   DURATION=30s CONNECTIONS=128 bash bench/compare.sh
#   BUSYAPI_FLAGS='--ring-bytes 8MiB' bash bench/compare.sh
#   ROUNDS=5 SERVERS='empty busyapi-memory' bash bench/compare.sh
#
# Each server runs alone, pinned to CPU $SERVER_CPU (default 0), with wrk
# pinned to CPU $LOAD_CPU (default 1). Environment:
#   DURATION       wrk duration per run (default 10s)
#   CONNECTIONS    wrk connections (default 64)
#   THREADS        wrk threads (default 1)
#   SERVER_CPU     CPU list for the servers (default 0)
#   LOAD_CPU       CPU list for wrk (default 1)
#   BUSYAPI_FLAGS  extra flags for busyapi, e.g. '--ack memory'
#   BUSYAPI_DATA   busyapi's --data-dir (default: a fresh directory under the
#                  build directory, removed at exit; never the repo root)
#   ROUNDS         how many times to run the servers in turn (default 1);
#                  the table then gives each server's median req/s, and the
#                  ratios are the medians of the ratios of each round, so a
#                  machine whose speed drifts during the run moves both sides
#                  of a ratio alike
#   SERVERS        which servers to run, of: empty empty-timeouts empty-201
#                  busyapi busyapi-memory nethttp (default all)
#   KEEP_LOGS=1    keep the build directory with the servers' logs
# Ports 18081 (empty), 18082 (busyapi) and 18083 (nethttp) must be free.
# Exits non-zero if a build fails, a server does not start or wrk fails.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-1}
SERVERS=${SERVERS:-empty empty-timeouts empty-201 busyapi busyapi-memory nethttp}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUSYAPI_FLAGS=${BUSYAPI_FLAGS:-}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go wrk taskset

cleanup() {
	stop_server
	if [[ ${KEEP_LOGS:-0} == 1 ]]; then
		echo "compare.sh: logs kept in $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT

build

# bench NAME PORT SCRIPT: run wrk, print its req/s; fail on socket errors
# or non-2xx answers.
bench() {
	local name=$1 port=$2 script=$3 out
	out=$(run_wrk "$name" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$script" "http://127.0.0.1:$port/api/usages")
	printf '%s\n' "$out" >>"$tmp/$name.$(basename "$script" .lua).wrk"
	awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out"
}

# plain[NAME,ROUND] and pipelined[NAME,ROUND] hold req/s.
declare -A plain pipelined
run() {
	local name=$1 round=$2 port=$3
	shift 3
	echo "$name (round $round of $ROUNDS): starting on port $port (CPU $SERVER_CPU), wrk on CPU $LOAD_CPU, $DURATION per run" >&2
	start_server "$name" "$port" "$@"
	plain[$name,$round]=$(bench "$name" "$port" bench/post.lua)
	pipelined[$name,$round]=$(bench "$name" "$port" bench/pipeline.lua)
	stop_server
	echo "$name: ${plain[$name,$round]} req/s plain, ${pipelined[$name,$round]} req/s pipelined" >&2
}

# median X...: the median of numbers (the mean of the middle two of an even
# count).
median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# stat ARRAY NAME: ARRAY's (plain or pipelined) median req/s of NAME.
stat() {
	local -n a=$1
	local r v=()
	for ((r = 1; r <= ROUNDS; r++)); do v+=("${a[$2,$r]}"); done
	printf '%.0f' "$(median "${v[@]}")"
}

# ratios ARRAY A B [DIGITS]: ARRAY's A/B ratio of each round.
ratios() {
	local -n a=$1
	local r v=()
	for ((r = 1; r <= ROUNDS; r++)); do v+=("$(ratio "${a[$2,$r]}" "${a[$3,$r]}" "${4:-2}")"); done
	echo "${v[*]}"
}

# rstat ARRAY A B: the median over the rounds of ARRAY's A/B ratio.
rstat() {
	# shellcheck disable=SC2046 # a list of numbers
	printf '%.2f' "$(median $(ratios "$@" 4))"
}

wanted() { [[ " $SERVERS " == *" $1 "* ]]; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)" >&2
# busyapi keeps a durable log in --data-dir (default ./data): give it a fresh
# one, unless this busyapi predates the flag.
data_flags=()
# (The help text is read whole first: grep -q stops at the first match, and
# under pipefail busyapi's SIGPIPE would then fail the test at random.)
help=$("$tmp/busyapi" --help 2>&1 || true)
if grep -q -- '-data-dir' <<<"$help"; then
	data_flags=(--data-dir "${BUSYAPI_DATA:-$tmp/busyapi-data}")
fi
for ((round = 1; round <= ROUNDS; round++)); do
	! wanted empty || run empty "$round" 18081 "$tmp/empty" -addr 127.0.0.1:18081
	! wanted empty-timeouts || run empty-timeouts "$round" 18081 "$tmp/empty" -addr 127.0.0.1:18081 -timeouts
	! wanted empty-201 || run empty-201 "$round" 18081 "$tmp/empty" -addr 127.0.0.1:18081 -timeouts -created
	for s in busyapi busyapi-memory; do
		wanted "$s" || continue
		ack=()
		if [ "$s" = busyapi-memory ]; then
			[ -n "${data_flags[*]}" ] || continue # no log: memory mode is all there is
			ack=(--ack memory)
		fi
		rm -rf "${BUSYAPI_DATA:-$tmp/busyapi-data}"
		# shellcheck disable=SC2086 # BUSYAPI_FLAGS is a list of flags
		run "$s" "$round" 18082 "$tmp/busyapi" --addr 127.0.0.1:18082 "${data_flags[@]}" "${ack[@]}" $BUSYAPI_FLAGS
	done
	! wanted nethttp || run nethttp "$round" 18083 "$tmp/nethttp" -addr 127.0.0.1:18083
done
rm -rf "${BUSYAPI_DATA:-$tmp/busyapi-data}"

ran=()
for s in empty empty-timeouts empty-201 busyapi busyapi-memory nethttp; do
	[ -n "${plain[$s,1]:-}" ] && ran+=("$s")
done
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU (req/s; the median of $ROUNDS rounds)"
echo "busyapi flags: ${data_flags[*]} $BUSYAPI_FLAGS"
printf '%-30s %12s %12s\n' server plain "pipelined16"
for s in "${ran[@]}"; do
	printf '%-30s %12s %12s\n' "$s" "$(stat plain "$s")" "$(stat pipelined "$s")"
done
# each_pair CMD...: run CMD S B for each server S of busyapi, busyapi-memory
# and nethttp against each baseline B of the empty handlers, both of which ran.
each_pair() {
	local s b
	for s in busyapi busyapi-memory nethttp; do
		[ -n "${plain[$s,1]:-}" ] || continue
		for b in empty empty-timeouts empty-201; do
			[ -n "${plain[$b,1]:-}" ] || continue
			"$@" "$s" "$b"
		done
	done
}
median_row() { printf '%-30s %12s %12s\n' "$1/$2" "$(rstat plain "$1" "$2")" "$(rstat pipelined "$1" "$2")"; }
rounds_row() { printf '%-30s %s | %s\n' "$1/$2" "$(ratios plain "$1" "$2")" "$(ratios pipelined "$1" "$2")"; }

echo
echo "ratios (the median of each round's ratio)"
each_pair median_row
if [ -n "${plain[busyapi,1]:-}" ] && [ -n "${plain[busyapi-memory,1]:-}" ]; then
	median_row busyapi busyapi-memory
fi
if ((ROUNDS > 1)); then
	echo
	echo "each round's ratio, plain | pipelined16"
	each_pair rounds_row
fi
