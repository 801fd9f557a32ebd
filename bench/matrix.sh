#!/usr/bin/env bash
# matrix.sh: closed-loop throughput and latency of busyapi and its
# baselines with `busyapi bench`, for each server, connection count and
# load shape, printed as the rows of a Markdown table (BENCHMARKS.md).
#
#   bash bench/matrix.sh                                  # every server, 64/1000/10000 connections, plain
#   MODES='plain pipelined batch' bash bench/matrix.sh
#   SERVERS='busyapi busyapi-memory' CONNS=1000 MODES=batch bash bench/matrix.sh
#   DURATION=3s WARMUP=1s bash bench/matrix.sh            # a quick look
#
# Each server is started in turn, pinned to CPU $SERVER_CPU (default 0) on
# port 18087 with a fresh data directory for each run; busyapi bench runs
# pinned to CPU $LOAD_CPU (default 1) with --pid, so the server's peak RSS
# is reported.
# Environment:
#   SERVERS   any of empty, nethttp, busyapi-memory, busyapi (default all four)
#   CONNS     connection counts (default '64 1000 10000')
#   MODES     any of plain, pipelined (--pipeline $PIPELINE), batch (--batch
#             $BATCH; busyapi only: the baselines have no batch endpoint)
#             (default plain)
#   PIPELINE  default 16; BATCH default 100
#   DURATION  measured time per run (default 30s); WARMUP (default 5s)
#   BUSYAPI_FLAGS  more flags for busyapi
#   KEEP=DIR  keep each run's JSON in DIR
# A failed run (errors, non-2xx, repeated ids) is printed with FAIL and its
# reasons; the script goes on.
set -euo pipefail

SERVERS=${SERVERS:-empty nethttp busyapi-memory busyapi}
CONNS=${CONNS:-64 1000 10000}
MODES=${MODES:-plain}
PIPELINE=${PIPELINE:-16}
BATCH=${BATCH:-100}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
LOAD_CPU=${LOAD_CPU:-1}
port=18087

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go taskset awk
build
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

echo "busyapi bench, closed loop, $DURATION after $WARMUP warmup; server on CPU ${SERVER_CPU:-0}, generator on CPU $LOAD_CPU"
echo
echo '| server | load | connections | req/s | usages/s | p50 ms | p99 ms | p99.9 ms | max ms | server peak RSS MiB | result |'
echo '|---|---|---|---|---|---|---|---|---|---|---|'
for server in $SERVERS; do
	for mode in $MODES; do
		case $mode in
		plain) flags=() ;;
		pipelined) flags=(--pipeline "$PIPELINE") ;;
		batch)
			[[ $server == busyapi* ]] || continue
			flags=(--batch "$BATCH")
			;;
		*) echo "matrix.sh: unknown mode $mode: use plain, pipelined or batch" >&2; exit 2 ;;
		esac
		for c in $CONNS; do
			# A fresh server (and data directory) for each run.
			# shellcheck disable=SC2046 # the command is a list of words
			start_server "$server" $port $(server_cmd "$server" $port)
			out="$tmp/$server-$mode-$c.json"
			taskset -c "$LOAD_CPU" "$tmp/busyapi" bench --url "http://127.0.0.1:$port" --connections "$c" \
				--duration "$DURATION" --warmup "$WARMUP" --progress off --json --pid "$server_pid" "${flags[@]}" \
				>"$out" 2>"$tmp/err" || true
			stop_server
			if [[ ! -s $out ]]; then
				echo "matrix.sh: busyapi bench did not run against $server:" >&2
				cat "$tmp/err" >&2
				exit 1
			fi
			[[ -n ${KEEP:-} ]] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
			result=$(jok "$out")
			if [[ $result == FAIL ]]; then
				result="FAIL: $(awk '/"failures": \[/ { f = 1; next } f && /\]/ { exit }
					f { gsub(/^ +"|",?$/, ""); printf "%s%s", sep, $0; sep = "; " }' "$out")"
			fi
			printf '| %s | %s | %s | %.0f | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f | %s |\n' "$server" "$mode${flags[*]:+ (${flags[*]})}" "$c" \
				"$(jnum "$out" achieved_rate)" "$(jnum "$out" usages_per_second)" \
				"$(jnum "$out" p50 latency_ms)" "$(jnum "$out" p99 latency_ms)" "$(jnum "$out" p99_9 latency_ms)" \
				"$(jnum "$out" max latency_ms)" "$(awk -v k="$(jnum "$out" peak_rss_kib server)" 'BEGIN { print k / 1024 }')" "$result"
		done
	done
done
