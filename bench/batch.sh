#!/usr/bin/env bash
# batch.sh: batch ingest throughput of busyapi, in usages per second, with
# wrk posting NDJSON batches (bench/batch.lua) to POST /api/usages/batch, in
# both ack modes.
#
#   bash bench/batch.sh                    # from the repo root
#   BATCH=1000 CONNECTIONS=8 DURATION=10s bash bench/batch.sh
#
# busyapi runs pinned to CPU $SERVER_CPU (default 0) with a fresh data
# directory, wrk pinned to CPU $LOAD_CPU (default 1). Port 18084 must be
# free. Exits non-zero if the build fails, the port is in use, the server
# does not start within 10 s, or wrk fails or sees a non-2xx answer.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
export BATCH=${BATCH:-1000}
port=18084

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go wrk taskset
go build -o "$tmp/busyapi" .

printf '%-8s %12s %16s %10s\n' ack batches/s usages/s p99
for mode in memory fsync; do
	rm -rf "$tmp/data"
	start_server "$mode" "$port" "$tmp/busyapi" --addr "127.0.0.1:$port" --ack "$mode" --data-dir "$tmp/data"
	out=$(run_wrk "--ack $mode" -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/batch.lua \
		"http://127.0.0.1:$port/api/usages/batch")
	stop_server
	rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
	p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
	printf '%-8s %12.0f %16.0f %10s\n' "$mode" "$rps" "$(awk -v r="$rps" -v b="$BATCH" 'BEGIN { print r * b }')" "$p99"
done
