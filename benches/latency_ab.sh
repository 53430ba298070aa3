#!/usr/bin/env bash
# Fixed-rate latency, interleaved A/B: canopy with work stealing, canopy with
# pingora's per-thread runtimes, and nginx, all running side by side on one
# upstream; oha at RATE req/s for DUR, three rounds in turn, so slow drift of
# the machine hits every variant alike.
#
#   bash benches/latency_ab.sh        # THREADS=1 RATE=2000 DUR=8s
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin canopy --example upstream --example testkit 2>&1 | tail -1
. benches/common.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-ab.XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$TMP"' EXIT
T=${THREADS:-1}
start_upstream
start_canopy() { # start_canopy PORT WORK_STEALING
  local cfg
  cfg=$(canopy_cfg "$TMP/canopy-$1.toml" "$1" "$(port)" "127.0.0.1:$UP" "threads = $T"$'\n'"work-stealing = $2")
  $REL/canopy serve -c "$cfg" >"$TMP/canopy-$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1"
}
STEAL=$(port); start_canopy "$STEAL" true
NOSTEAL=$(port); start_canopy "$NOSTEAL" false
NGINX=$(port)
nginx_conf "$TMP/nginx" "$NGINX" "127.0.0.1:$UP" "$T" >/dev/null
/usr/sbin/nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$NGINX"
# p50 and p99 in ms from oha's latency distribution (its unit varies)
percentiles() {
  oha -z "${DUR:-8s}" -q "${RATE:-2000}" -c 32 --no-tui "$1" 2>&1 | awk '/^ *(50|99)(\.00)?% in/ {
    f = ($4 == "secs" || $4 == "s") ? 1000 : ($4 == "ms") ? 1 : ($4 == "ns") ? 1e-6 : 1e-3
    printf "%s=%.3f ", $1, $3 * f }'
}
for r in 1 2 3; do
  echo "round $r canopy steal:   $(percentiles "http://127.0.0.1:$STEAL/products")"
  echo "round $r canopy nosteal: $(percentiles "http://127.0.0.1:$NOSTEAL/products")"
  echo "round $r nginx:          $(percentiles "http://127.0.0.1:$NGINX/products")"
done
