# lib.sh: helpers shared by the bench scripts (sourced, not run).
#
# They expect $root (the repo root, the current directory) and $tmp (the
# scratch directory bench_init makes), and set server_pid.

server_pid=

# port_open PORT: whether something accepts connections on 127.0.0.1:PORT.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# start_server NAME PORT CMD...: start a server pinned to SERVER_CPU, its
# output in $tmp/NAME.log, and wait up to 10 s for its port to open.
start_server() {
	local name=$1 port=$2
	shift 2
	if port_open "$port"; then
		echo "$(basename "$0"): port $port is already in use; cannot start $name" >&2
		exit 1
	fi
	taskset -c "${SERVER_CPU:-0}" "$@" >"$tmp/$name.log" 2>&1 &
	server_pid=$!
	local i
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$server_pid" 2>/dev/null; then
			echo "$(basename "$0"): $name exited at start; its log:" >&2
			cat "$tmp/$name.log" >&2
			server_pid=
			exit 1
		fi
		if port_open "$port"; then
			return 0
		fi
		sleep 0.1
	done
	echo "$(basename "$0"): $name did not open port $port within 10s; its log:" >&2
	cat "$tmp/$name.log" >&2
	exit 1
}

stop_server() {
	if [[ -n $server_pid ]]; then
		kill "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
		server_pid=
	fi
}

# server_cmd NAME PORT: the command line that serves NAME on 127.0.0.1:PORT,
# from the binaries in $tmp: empty (bench/empty), nethttp (bench/nethttp),
# busyapi (default --ack fsync) or busyapi-memory (--ack memory), the
# last two with a fresh data directory in $tmp. BUSYAPI_FLAGS are added to
# busyapi's.
server_cmd() {
	case $1 in
	empty) echo "$tmp/empty -addr 127.0.0.1:$2" ;;
	nethttp) echo "$tmp/nethttp -addr 127.0.0.1:$2" ;;
	busyapi)
		rm -rf "$tmp/data"
		echo "$tmp/busyapi --addr 127.0.0.1:$2 --data-dir $tmp/data ${BUSYAPI_FLAGS:-}"
		;;
	busyapi-memory)
		rm -rf "$tmp/data"
		echo "$tmp/busyapi --addr 127.0.0.1:$2 --data-dir $tmp/data --ack memory ${BUSYAPI_FLAGS:-}"
		;;
	*)
		echo "$(basename "$0"): unknown server $1: use empty, nethttp, busyapi or busyapi-memory" >&2
		exit 2
		;;
	esac
}

# build: busyapi, bench/empty and bench/nethttp into $tmp.
build() {
	echo "building into $tmp" >&2
	go build -o "$tmp/busyapi" .
	go build -o "$tmp/empty" ./bench/empty
	go build -o "$tmp/nethttp" ./bench/nethttp
}

# jnum FILE KEY [OBJECT]: the number after "KEY": in busyapi bench's JSON
# output, within "OBJECT": {...} if given.
jnum() {
	awk -v key="\"$2\":" -v obj="${3:+\"$3\":}" '
		obj != "" && $1 == obj { inside = 1 }
		(obj == "" || inside) && $1 == key { v = $2; sub(/,$/, "", v); print v; exit }
	' "$1"
}

# jok FILE: PASS or FAIL, from busyapi bench's JSON output.
jok() {
	if grep -q '^  "ok": true' "$1"; then echo PASS; else echo FAIL; fi
}

# cpu_ticks CPU: "busy total" clock ticks of one CPU so far, from /proc/stat
# (idle and iowait are not busy). Two readings give the busy share between.
cpu_ticks() {
	awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# busy_pct "BUSY0 TOTAL0" "BUSY1 TOTAL1": the busy share between two
# cpu_ticks readings, in percent.
busy_pct() {
	awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}

# ratio A B [DIGITS]: A / B to DIGITS decimals (default 2), or n/a when B
# is 0.
ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b > 0) printf "%.*f", d, a / b; else print "n/a" }'; }

# bench_init TOOL...: fail unless every TOOL is on PATH, make the scratch
# directory $tmp, and on exit stop the server and remove $tmp. A script
# with more to clean up sets its own EXIT trap afterwards.
bench_init() {
	local tool name
	name=$(basename "$0" .sh)
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "$name.sh: $tool not found" >&2; exit 1; }
	done
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/busyapi-$name.XXXXXX")
	trap 'stop_server; rm -rf "$tmp"' EXIT
	trap 'exit 130' INT TERM
}

# run_wrk NAME WRK-ARGS...: run wrk on CPU $LOAD_CPU and print its output;
# exit if wrk fails or saw socket errors or answers other than 2xx. Call it
# as out=$(run_wrk ...) so that the exit ends the script (set -e).
run_wrk() {
	local name=$1 out
	shift
	if ! out=$(taskset -c "$LOAD_CPU" wrk "$@" 2>&1); then
		echo "$(basename "$0"): wrk failed against $name:" >&2
		echo "$out" >&2
		exit 1
	fi
	if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
		echo "$(basename "$0"): wrk saw errors against $name:" >&2
		echo "$out" >&2
		exit 1
	fi
	printf '%s\n' "$out"
}
