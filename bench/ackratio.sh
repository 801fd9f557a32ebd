#!/usr/bin/env bash
# ackratio.sh: busyapi's default fsync mode against --ack memory, the figure
# of issue 3 (fsync at least 0.80 x memory, one server core, 256
# connections). The two modes run alternately ROUNDS times in the same run,
# each on a fresh data directory, so that the machine's drift hits both.
#
#   bash bench/ackratio.sh                  # from the repo root
#   ROUNDS=5 DURATION=10s CONNECTIONS=256 bash bench/ackratio.sh
#
# busyapi runs pinned to CPU $SERVER_CPU (default 0), wrk (bench/post.lua)
# to CPU $LOAD_CPU (default 1). Port 18088 must be free. Prints each round's
# req/s and ratio, and the ratio of the means. BUSYAPI_FLAGS are added to
# both modes' flags.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-256}
ROUNDS=${ROUNDS:-5}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
port=18088

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go wrk taskset awk
go build -o "$tmp/busyapi" .
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# rate SERVER: start SERVER (busyapi or busyapi-memory, as server_cmd names
# them: each on a fresh data directory), run wrk, print its req/s.
rate() {
	local out
	# shellcheck disable=SC2046 # the command is a list of words
	start_server "$1" "$port" $(server_cmd "$1" "$port")
	out=$(run_wrk "$1" -t1 -c"$CONNECTIONS" -d"$DURATION" -s bench/post.lua "http://127.0.0.1:$port/api/usages")
	stop_server
	awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out"
}

echo "wrk -t1 -c$CONNECTIONS -d$DURATION, busyapi on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU (req/s)"
sum_f=0 sum_m=0
for ((r = 1; r <= ROUNDS; r++)); do
	f=$(rate busyapi)
	m=$(rate busyapi-memory)
	echo "round $r: fsync $f, memory $m, ratio $(ratio "$f" "$m")"
	sum_f=$((sum_f + f)) sum_m=$((sum_m + m))
done
echo "mean: fsync $((sum_f / ROUNDS)), memory $((sum_m / ROUNDS)), ratio $(ratio "$sum_f" "$sum_m")"
