#!/usr/bin/env bash
# Starts busyapi in scale-out mode on one machine, for trying it out:
# a 3-node NATS JetStream cluster (deploy/nats/), N busyapi instances on
# ports 3001..300N, each with its own data directory, forwarding to the
# stream USAGES (3 replicas), and nginx on port 3000 in front of them
# (deploy/nginx.conf), if nginx is installed.
#
#   deploy/run.sh up [N]          build and start everything (N defaults to 3)
#   deploy/run.sh status          what runs, and each instance's /readyz
#   deploy/run.sh down            stop everything it started (SIGTERM: busyapi
#                                 forwards what is left, then exits)
#   deploy/run.sh render N DIR    only write the configs for N instances to DIR
#
# Everything lives in the state directory, deploy/state (or $BUSYAPI_STATE):
# binaries, configs, logs, pid files, NATS and busyapi data. Needs Go and
# curl; nginx is optional ($NGINX names its binary; NGINX=none skips it).
# Ports: 3000 (nginx), 3001..300N (busyapi), 4222-4224 (NATS clients),
# 6222-6224 (NATS routes), 8222-8224 (NATS monitoring).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
state=${BUSYAPI_STATE:-$here/state}
nats_urls=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
}

# render N DIR: the nginx config with N upstream servers, and the NATS
# node configs, into DIR.
render() {
  local n=$1 dir=$2
  [[ $n =~ ^[1-9][0-9]?$ ]] || { echo "N must be 1 to 99, not '$n'" >&2; exit 2; }
  mkdir -p "$dir"
  awk -v n="$n" '
    /# servers: begin/ { print; for (i = 1; i <= n; i++) printf "        server 127.0.0.1:%d max_fails=3 fail_timeout=5s;\n", 3000 + i; skip = 1; next }
    /# servers: end/ { skip = 0 }
    !skip { print }
  ' "$here/nginx.conf" > "$dir/nginx.conf"
  cp "$here"/nats/nats-*.conf "$dir/"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_http URL SECONDS: until URL answers 200.
wait_http() {
  local url=$1 left=$(( $2 * 10 ))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    (( left-- > 0 )) || return 1
    sleep 0.1
  done
}

up() {
  local n=${1:-3}
  command -v go >/dev/null || { echo "Go is needed to build busyapi and nats-server: https://go.dev/dl/" >&2; exit 1; }
  command -v curl >/dev/null || { echo "curl is needed (apt-get install curl)" >&2; exit 1; }
  for f in "$state"/*.pid; do
    if [[ -f $f ]] && alive "$f"; then
      echo "already running (see $0 status); stop it with $0 down" >&2
      exit 1
    fi
  done
  mkdir -p "$state/bin"
  render "$n" "$state"
  echo "building busyapi and nats-server into $state/bin"
  (cd "$root" && go build -o "$state/bin/busyapi" . && go build -o "$state/bin/nats-server" github.com/nats-io/nats-server/v2)

  for i in 1 2 3; do
    (cd "$state" && exec ./bin/nats-server -c "nats-$i.conf" >"nats-$i.log" 2>&1) &
    echo $! > "$state/nats-$i.pid"
  done
  for i in 1 2 3; do
    wait_http "http://127.0.0.1:$((8221 + i))/healthz" 30 ||
      { echo "NATS node $i did not start: see $state/nats-$i.log" >&2; exit 1; }
  done
  echo "NATS cluster up: $nats_urls"

  for i in $(seq 1 "$n"); do
    "$state/bin/busyapi" --addr "127.0.0.1:$((3000 + i))" --data-dir "$state/busyapi-$i" \
      --nats "$nats_urls" --nats-replicas 3 >"$state/busyapi-$i.log" 2>&1 &
    echo $! > "$state/busyapi-$i.pid"
  done
  for i in $(seq 1 "$n"); do
    wait_http "http://127.0.0.1:$((3000 + i))/readyz" 30 ||
      { echo "busyapi $i did not start: see $state/busyapi-$i.log" >&2; exit 1; }
  done
  echo "busyapi instances up on 127.0.0.1:3001..$((3000 + n))"

  local nginx=${NGINX:-}
  if [[ -z $nginx ]]; then
    nginx=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || echo none)
  fi
  if [[ $nginx != none ]]; then
    mkdir -p "$state/nginx"
    "$nginx" -p "$state/nginx" -c "$state/nginx.conf" -e stderr -g 'daemon off;' >"$state/nginx.log" 2>&1 &
    echo $! > "$state/nginx.pid"
    wait_http "http://127.0.0.1:3000/readyz" 10 || { echo "nginx did not start: see $state/nginx.log" >&2; exit 1; }
    echo "nginx up on :3000, balancing over the $n instances"
    target=http://127.0.0.1:3000
  else
    echo "nginx is not installed, so there is no load balancer on :3000; the instances run without it."
    echo "  install it (Debian/Ubuntu: sudo apt-get install nginx; Fedora: sudo dnf install nginx; macOS: brew install nginx),"
    echo "  then run: $0 down && $0 up $n"
    target=http://127.0.0.1:3001
  fi
  cat <<MSG

Try it:
  curl -s -X POST -H 'Content-Type: application/json' \\
    -d '{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}' $target/api/usages
  curl -s 127.0.0.1:3001/readyz     # forward lag of instance 1
  # the stream, with the nats CLI: nats --server $nats_urls stream view USAGES
Logs and data: $state. Stop: $0 down
MSG
}

status() {
  local f
  for f in "$state"/*.pid; do
    [[ -f $f ]] || continue
    local name
    name=$(basename "$f" .pid)
    if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: not running"; fi
  done
  for f in "$state"/busyapi-*.pid; do
    [[ -f $f ]] || continue
    local i=${f##*busyapi-}
    i=${i%.pid}
    echo "busyapi-$i /readyz: $(curl -fsS "http://127.0.0.1:$((3000 + i))/readyz" 2>/dev/null || echo unreachable)"
  done
}

# stop FILE...: SIGTERM to the processes of the pid files, together, and
# wait up to 15 s for them to exit.
stop() {
  local f pid stopping=()
  for f in "$@"; do
    [[ -f $f ]] || continue
    if alive "$f"; then
      pid=$(cat "$f")
      kill -TERM "$pid" 2>/dev/null || true
      stopping+=("$pid:$(basename "$f" .pid)")
    fi
    rm -f "$f"
  done
  for p in "${stopping[@]}"; do
    pid=${p%%:*}
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && echo "${p#*:} (pid $pid) did not stop in 15s" >&2
  done
  return 0
}

down() {
  # busyapi first (it forwards what is left while NATS still runs), then
  # nginx, then NATS.
  stop "$state"/busyapi-*.pid
  stop "$state"/nginx.pid
  stop "$state"/nats-*.pid
  echo "stopped; data kept in $state (remove it to start afresh)"
}

case ${1:-} in
  up) up "${2:-3}" ;;
  status) status ;;
  down) down ;;
  render) [[ $# -eq 3 ]] || usage; render "$2" "$3" ;;
  *) usage ;;
esac
