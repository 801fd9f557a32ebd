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
#   KEEP_LOGS=1    keep the build directory with the servers' logs
# Ports 18081 (empty), 18082 (busyapi) and 18083 (nethttp) must be free.
# Exits non-zero if a build fails, a server does not start or wrk fails.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
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
	printf '%s\n' "$out" >"$tmp/$name.$(basename "$script" .lua).wrk"
	awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out"
}

declare -A plain pipelined
run() {
	local name=$1 port=$2
	shift 2
	echo "$name: starting on port $port (CPU $SERVER_CPU), wrk on CPU $LOAD_CPU, $DURATION per run" >&2
	start_server "$name" "$port" "$@"
	plain[$name]=$(bench "$name" "$port" bench/post.lua)
	pipelined[$name]=$(bench "$name" "$port" bench/pipeline.lua)
	stop_server
	echo "$name: ${plain[$name]} req/s plain, ${pipelined[$name]} req/s pipelined" >&2
}

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
run empty 18081 "$tmp/empty" -addr 127.0.0.1:18081
run empty-timeouts 18081 "$tmp/empty" -addr 127.0.0.1:18081 -timeouts
run empty-201 18081 "$tmp/empty" -addr 127.0.0.1:18081 -timeouts -created
# shellcheck disable=SC2086 # BUSYAPI_FLAGS is a list of flags
run busyapi 18082 "$tmp/busyapi" --addr 127.0.0.1:18082 "${data_flags[@]}" $BUSYAPI_FLAGS
if [ -n "${data_flags[*]}" ]; then
	rm -rf "${BUSYAPI_DATA:-$tmp/busyapi-data}"
	# shellcheck disable=SC2086
	run busyapi-memory 18082 "$tmp/busyapi" --addr 127.0.0.1:18082 "${data_flags[@]}" --ack memory $BUSYAPI_FLAGS
fi
run nethttp 18083 "$tmp/nethttp" -addr 127.0.0.1:18083

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU (req/s)"
echo "busyapi flags: ${data_flags[*]} $BUSYAPI_FLAGS"
printf '%-16s %12s %12s\n' server plain "pipelined16"
for s in empty empty-timeouts empty-201 busyapi busyapi-memory nethttp; do
	[ -n "${plain[$s]:-}" ] || continue
	printf '%-28s %12s %12s\n' "$s" "${plain[$s]}" "${pipelined[$s]}"
done
for s in busyapi busyapi-memory nethttp; do
	[ -n "${plain[$s]:-}" ] || continue
	for b in empty empty-timeouts empty-201; do
		printf '%-28s %12s %12s\n' "$s/$b" "$(ratio "${plain[$s]}" "${plain[$b]}")" \
			"$(ratio "${pipelined[$s]}" "${pipelined[$b]}")"
	done
done
if [ -n "${plain[busyapi-memory]:-}" ]; then
	printf '%-28s %12s %12s\n' "busyapi/busyapi-memory" "$(ratio "${plain[busyapi]}" "${plain[busyapi-memory]}")" \
		"$(ratio "${pipelined[busyapi]}" "${pipelined[busyapi-memory]}")"
fi
