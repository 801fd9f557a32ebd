#!/usr/bin/env bash
# scaleout.sh: what scale-out mode (--nats) costs one busyapi instance, and
# how far forwarding lags, against a local single-node JetStream
# (nats-server built from the module).
#
#   bash bench/scaleout.sh                       # from the repo root
#   CONNECTIONS=256 DURATION=10s ROUNDS=2 bash bench/scaleout.sh
#
# 1. POST throughput with wrk (bench/post.lua), busyapi standalone and with
#    --nats, alternately ROUNDS times in the same run; prints the ratio, and
#    the ratio per server core (req/s over the server CPU's busy share).
# 2. Forward lag at 1M users per minute: `busyapi bench --users-per-minute
#    1000000 --connections 10000` against busyapi --nats for LAG_DURATION,
#    sampling busyapi_forward_lag_seconds and _usages from /metrics every
#    100 ms; prints their p50, p99 and max.
# busyapi runs pinned to CPU $SERVER_CPU (default 0); wrk, busyapi bench and
# nats-server share CPU $LOAD_CPU (default 1). Ports 18086 and 14222 must be
# free. ACK (default fsync) is busyapi's --ack.
set -euo pipefail

DURATION=${DURATION:-10s}
LAG_DURATION=${LAG_DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-256}
ROUNDS=${ROUNDS:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ACK=${ACK:-fsync}
port=18086
natsport=14222

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init go wrk taskset curl
nats_pid=
cleanup() {
	stop_server
	if [[ -n $nats_pid ]]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/busyapi" .
go build -o "$tmp/nats-server" github.com/nats-io/nats-server/v2
taskset -c "$LOAD_CPU" "$tmp/nats-server" -js -sd "$tmp/nats" -a 127.0.0.1 -p "$natsport" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
for ((i = 0; i < 100; i++)); do port_open "$natsport" && break; sleep 0.1; done
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# start NAME [FLAGS]: busyapi with a fresh data directory, once it answers 201
# (in scale-out mode, once it has leased ids).
start() {
	local name=$1
	shift
	rm -rf "$tmp/data"
	start_server "$name" "$port" "$tmp/busyapi" --addr "127.0.0.1:$port" --data-dir "$tmp/data" --ack "$ACK" "$@"
	for ((i = 0; i < 100; i++)); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
			-d '{"patientId":1,"timestamp":"t","medication":"m"}' "http://127.0.0.1:$port/api/usages") == 201 ]] && return 0
		sleep 0.1
	done
	echo "scaleout.sh: $name answered no 201 within 10 s" >&2
	exit 1
}

# wrkrun: run wrk; print its req/s and the busy share (%) of the server's
# CPU and of the load CPU meanwhile.
wrkrun() {
	local out s0 s1 l0 l1
	s0=$(cpu_ticks "$SERVER_CPU") l0=$(cpu_ticks "$LOAD_CPU")
	out=$(run_wrk busyapi -t1 -c"$CONNECTIONS" -d"$DURATION" -s bench/post.lua "http://127.0.0.1:$port/api/usages")
	s1=$(cpu_ticks "$SERVER_CPU") l1=$(cpu_ticks "$LOAD_CPU")
	echo "$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out") $(busy_pct "$s0" "$s1") $(busy_pct "$l0" "$l1")"
}

echo "== POST throughput, wrk -c$CONNECTIONS -d$DURATION, --ack $ACK (req/s; busy share of the server CPU $SERVER_CPU and the load CPU $LOAD_CPU)"
# Per server core: req/s divided by the server CPU's busy share, the rate one
# fully used server core would carry. wrk and nats-server share the load CPU;
# where that CPU is saturated, the plain ratio measures it, not busyapi.
sum_s=0 sum_n=0 sum_sc=0 sum_nc=0
for ((r = 1; r <= ROUNDS; r++)); do
	start standalone
	out=$(wrkrun)
	read -r s s_cpu s_load <<<"$out"
	stop_server
	start scaleout --nats "nats://127.0.0.1:$natsport"
	out=$(wrkrun)
	read -r n n_cpu n_load <<<"$out"
	stop_server
	sc=$(awk -v a="$s" -v c="$s_cpu" 'BEGIN { printf "%.0f", a * 100 / c }')
	nc=$(awk -v a="$n" -v c="$n_cpu" 'BEGIN { printf "%.0f", a * 100 / c }')
	echo "round $r: standalone $s (server CPU $s_cpu%, load CPU $s_load%), scale-out $n (server CPU $n_cpu%, load CPU $n_load%), ratio $(ratio "$n" "$s"); per server core: $sc and $nc, ratio $(ratio "$nc" "$sc")"
	sum_s=$((sum_s + s)) sum_n=$((sum_n + n)) sum_sc=$((sum_sc + sc)) sum_nc=$((sum_nc + nc))
done
echo "mean: standalone $((sum_s / ROUNDS)), scale-out $((sum_n / ROUNDS)), ratio $(ratio "$sum_n" "$sum_s"); per server core: $((sum_sc / ROUNDS)) and $((sum_nc / ROUNDS)), ratio $(ratio "$sum_nc" "$sum_sc")"

echo "== forward lag at 1M users per minute (10,000 connections, $LAG_DURATION)"
start lag --nats "nats://127.0.0.1:$natsport"
(
	while kill -0 "$server_pid" 2>/dev/null; do
		curl -s "http://127.0.0.1:$port/metrics" |
			awk '/^busyapi_forward_lag_seconds /{s=$2} /^busyapi_forward_lag_usages /{u=$2} END{print s, u}'
		sleep 0.1
	done
) >"$tmp/lag.txt" 2>/dev/null &
sampler=$!
taskset -c "$LOAD_CPU" "$tmp/busyapi" bench --url "http://127.0.0.1:$port" --users-per-minute 1000000 \
	--connections 10000 --duration "$LAG_DURATION" --warmup 5s | grep -E '^(rate|status|errors|ids|latency|result)' || true
sleep 2
stop_server
wait "$sampler" 2>/dev/null || true
sort -g "$tmp/lag.txt" | awk '{ s[NR] = $1; u[NR] = $2 } END {
	if (NR == 0) { print "no samples"; exit 1 }
	printf "forward lag over %d samples: seconds p50 %.3f p99 %.3f max %.3f", NR, s[int(NR*0.5)+1], s[int(NR*0.99)+1], s[NR]
}'
sort -k2 -g "$tmp/lag.txt" | awk '{ u[NR] = $2 } END { printf "; usages p50 %d p99 %d max %d\n", u[int(NR*0.5)+1], u[int(NR*0.99)+1], u[NR] }'
