#!/usr/bin/env bash
# System calls per proxied request, counted by strace: canopy vs bare pingora
# vs nginx, same upstream, one keep-alive client, N requests (exact counts,
# unaffected by how busy the machine is; strace slows the proxies down, so
# read the counts, not the times).
#
#   bash benches/syscalls.sh            # N=2000
#   FRESH=1 bash benches/syscalls.sh    # a new TCP connection per request (Connection: close)
#   NO_BUILD=1 bash benches/syscalls.sh # use the release binaries already built
#
# Needs strace, nginx (optional), python3. Everything binds 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-syscalls.XXXXXX")
PIDS=()
# TERM first: a KILLed nginx master leaves its workers running (holding the
# caller's stdout open, so a `| tail` of this script never ends)
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
[ -n "${NO_BUILD:-}" ] || cargo build --release --bin canopy --example upstream --example bare_pingora --example testkit 2>&1 | tail -1
. benches/common.sh
start_upstream
# measure NAME PORT PID: strace the process (all threads) while N requests pass
measure() {
  local name=$1 p=$2 pid=$3
  drive "$p" 50   # warm the upstream connection pool
  strace -f -c -o "$TMP/$name.strace" -p "$pid" 2>/dev/null &
  local st=$!
  sleep 1
  drive "$p" "$N"
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  # strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall
  awk -v n="$N" -v name="$name" '
    $1 ~ /^[0-9.]+$/ && $NF != "total" { calls[$NF] = $4; total += $4 }
    END {
      printf "%-8s %6.2f syscalls/request:", name, total / n
      for (s in calls) if (calls[s] / n >= 0.05) printf " %s %.2f", s, calls[s] / n
      printf "\n"
    }' "$TMP/$name.strace"
}
p=$(port); $REL/examples/bare_pingora "127.0.0.1:$p" "127.0.0.1:$UP" 1 2>/dev/null & PIDS+=($!); wait_port "$p"; measure bare "$p" "$!"
p=$(port)
canopy_cfg "$TMP/canopy.toml" "$p" "$(port)" "127.0.0.1:$UP" >/dev/null
$REL/canopy serve -c "$TMP/canopy.toml" 2>/dev/null & PIDS+=($!); wait_port "$p"; measure canopy "$p" "$!"
if [[ -x /usr/sbin/nginx ]]; then
  p=$(port)
  nginx_conf "$TMP/nginx" "$p" "127.0.0.1:$UP" 1 >/dev/null
  /usr/sbin/nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >/dev/null 2>&1 & PIDS+=($!); wait_port "$p"
  sleep 0.3
  measure nginx "$p" "$(pgrep -P "$!" | head -1)"
fi
