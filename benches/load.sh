#!/usr/bin/env bash
# Load comparison: what does canopy cost per request compared with a bare
# pingora pass-through proxy, nginx and (if installed) haproxy?
#
#   bash benches/load.sh                      # defaults: THREADS=1 DURATION=10s
#   THREADS=2 DURATION=20s bash benches/load.sh
#   ROUNDS=3 bash benches/load.sh             # medians of 3 rounds (single runs vary ~15%)
#   PROXIES="canopy canopy-nosteal bare bare-nosteal bare-forward nginx" bash benches/load.sh
#                                             # pick variants (-nosteal: per-thread runtimes;
#                                             # bare-forward: bare + X-Forwarded-* and upstream timeouts)
#
# One upstream (examples/upstream.rs) answers GET /products with a small JSON.
# Each proxy in turn fronts it on loopback; wrk drives it with 32 keep-alive
# connections for DURATION after a 2s warm-up. We read the proxy's CPU time
# (utime+stime from /proc/PID/stat, summed over all its processes) before and
# after the measured run, so "CPU us/req" is the proxy's own cost per request,
# independent of how much of the (shared, small) machine wrk and the upstream
# take. Throughput and latency on a 2-core box are dominated by the load
# generator and the upstream sharing the CPUs; CPU us/req is the figure to
# compare. With THREADS=1 every proxy runs one core flat out, so its CPU
# us/req also depends on how well it batches under saturation: single runs
# vary by ~15%, use ROUNDS=3 for medians, and run on an otherwise idle machine
# (the script prints how busy the CPUs were before it started).
#
# Needs: cargo, wrk, curl. Optional: nginx,
# haproxy, oha. Everything binds 127.0.0.1 only.

set -euo pipefail

THREADS=${THREADS:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-1}                  # repeat the whole comparison; the table shows medians
READY_TIMEOUT=${READY_TIMEOUT:-15}   # seconds to wait for a process to answer

cd "$(dirname "$0")/.."
ROOT=$PWD
. benches/common.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-load.XXXXXX")

# Every process we start is recorded in PIDS and stopped (by pid) on exit.
PIDS=()
trap exit_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
# wrk latency like 812.00us / 1.23ms / 1.01s -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# ---------------------------------------------------------------- build
command -v wrk >/dev/null || die "wrk is not installed"
command -v curl >/dev/null || die "curl is not installed"
echo "== building release binaries"
run cargo build --release --bin canopy --example upstream --example bare_pingora --example testkit
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

# Other work on the machine skews everything; show how busy the CPUs were
# (before anything of ours runs).
busy_before

# ---------------------------------------------------------------- upstream
read -r UP_PORT CANOPY_PORT ADMIN_PORT BARE_PORT NGINX_PORT HAPROXY_PORT <<<"$(free_ports 6)"
UPSTREAM=127.0.0.1:$UP_PORT

"$BIN/examples/upstream" juniper "storefront=$UPSTREAM" >"$TMP/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http upstream "$UP_PID" "http://$UPSTREAM/products"
echo "== upstream on $UPSTREAM (pid $UP_PID); proxies get THREADS=$THREADS, wrk -t1 -c$CONNS -d$DURATION"

# ---------------------------------------------------------------- proxies
# Each start_* writes the proxy's pid into PROXY_PID and its URL into PROXY_URL.

start_canopy() { # start_canopy [METRICS=true] [WORK_STEALING=true]
  canopy_cfg "$TMP/canopy.toml" "$CANOPY_PORT" "$ADMIN_PORT" "$UPSTREAM" \
    "threads = $THREADS"$'\nshutdown-grace = "1s"\n'"metrics = ${1:-true}"$'\n'"work-stealing = ${2:-true}" >/dev/null
  "$BIN/canopy" serve -c "$TMP/canopy.toml" >"$TMP/canopy.log" 2>&1 &
  PROXY_PID=$!
  PROXY_URL=http://127.0.0.1:$CANOPY_PORT
}

# canopy with per-request metrics recording off: what recording costs (issue 4)
start_nometrics() { start_canopy false; }
# pingora's per-thread runtimes instead of one work-stealing runtime
start_canopy-nosteal() { start_canopy true false; }

start_bare() { # start_bare [steal|nosteal] [forward]
  "$BIN/examples/bare_pingora" "127.0.0.1:$BARE_PORT" "$UPSTREAM" "$THREADS" "${1:-steal}" ${2:-} >"$TMP/bare.log" 2>&1 &
  PROXY_PID=$!
  PROXY_URL=http://127.0.0.1:$BARE_PORT
}
start_bare-nosteal() { start_bare nosteal; }
# bare pingora doing the same forwarding job: X-Forwarded-*, upstream timeouts
start_bare-forward() { start_bare steal forward; }

start_nginx() {
  nginx_conf "$TMP/nginx" "$NGINX_PORT" "$UPSTREAM" "$THREADS" >/dev/null
  # -e: early error log (before the config is read) also goes to the temp dir
  /usr/sbin/nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.log" 2>&1 &
  PROXY_PID=$!
  PROXY_URL=http://127.0.0.1:$NGINX_PORT
}

start_haproxy() {
  haproxy_cfg "$TMP/haproxy.cfg" "$HAPROXY_PORT" "$UPSTREAM" "$THREADS" >/dev/null
  /usr/sbin/haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
  PROXY_PID=$!
  PROXY_URL=http://127.0.0.1:$HAPROXY_PORT
}

# PROXIES="canopy bare bare-nosteal nginx" picks (and orders) the variants;
# `bare` is the baseline of the ratios and is always measured.
if [[ -n "${PROXIES:-}" ]]; then
  read -r -a PROXIES <<<"$PROXIES"
  [[ " ${PROXIES[*]} " == *" bare "* ]] || PROXIES+=(bare)
else
  PROXIES=(canopy nometrics bare)
  [[ -x /usr/sbin/nginx ]] && PROXIES+=(nginx) || echo "(nginx not installed: skipped)"
  [[ -x /usr/sbin/haproxy ]] && PROXIES+=(haproxy) || echo "(haproxy not installed: skipped)"
fi
HAVE_OHA=0
command -v oha >/dev/null && HAVE_OHA=1

# Per proxy, space-separated values, one per round.
declare -A RPS P99 CPU OHA_P99

# ---------------------------------------------------------------- measure
measure() { # measure NAME: start the proxy, check it, load it, record, stop it
  local name=$1 headers status before after out requests rps p99 cpu
  echo "== $name"
  "start_$name"
  PIDS+=("$PROXY_PID")
  wait_http "$name" "$PROXY_PID" "$PROXY_URL/products"

  # correctness first: a 200 from the upstream, and canopy must say which release answered
  headers=$(curl -s -D - -o "$TMP/$name.body" --max-time 2 "$PROXY_URL/products")
  status=$(head -n 1 <<<"$headers" | awk '{print $2}')
  [[ $status == 200 ]] || die "$name: GET /products answered $status"
  if [[ $name == canopy || $name == nometrics ]]; then
    grep -qi '^x-canopy-release: juniper' <<<"$headers" || die "canopy: response lacks x-canopy-release: juniper"
  fi
  grep -q '"release":"juniper"' "$TMP/$name.body" || die "$name: body did not come from the upstream"

  run wrk -t1 -c"$CONNS" -d"$WARMUP" "$PROXY_URL/products" >/dev/null

  before=$(cpu_ticks "$PROXY_PID")
  run wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$PROXY_URL/products" >"$TMP/$name.wrk"
  after=$(cpu_ticks "$PROXY_PID")

  out=$(cat "$TMP/$name.wrk")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  # microseconds of proxy CPU per request
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  RPS[$name]+=" $rps" P99[$name]+=" $p99" CPU[$name]+=" $cpu"
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    echo "   warning: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ')"
  fi
  echo "   $requests requests, $rps req/s, p99 $p99 ms, CPU $((after - before)) ticks = $cpu us/req"

  if ((HAVE_OHA)); then
    run oha -z 10s -q 2000 -c "$CONNS" --no-tui "$PROXY_URL/products" >"$TMP/$name.oha" 2>&1
    # "99.00% in 741.5 µs" (unit varies: secs, ms, µs/us, ns; older oha: "99% in ...")
    OHA_P99[$name]+=" $(awk '/^ *99(\.00)?% in/ {
      f = ($4 == "secs" || $4 == "s") ? 1000 : ($4 == "ms") ? 1 : ($4 == "ns") ? 1e-6 : 1e-3
      printf "%.3f", $3 * f; exit }' "$TMP/$name.oha")"
  fi

  stop_pid "$PROXY_PID"   # one proxy at a time: nothing else competes for CPU
  forget "$PROXY_PID"
}

for ((round = 1; round <= ROUNDS; round++)); do
  ((ROUNDS == 1)) || echo "-- round $round of $ROUNDS"
  for name in "${PROXIES[@]}"; do measure "$name"; done
done

# ---------------------------------------------------------------- report
declare -A M_RPS M_P99 M_CPU
for name in "${PROXIES[@]}"; do
  M_RPS[$name]=$(median "${RPS[$name]}" %.0f)
  M_P99[$name]=$(median "${P99[$name]}" %.3f)
  M_CPU[$name]=$(median "${CPU[$name]}" %.2f)
done

echo
echo "THREADS=$THREADS, wrk -t1 -c$CONNS -d$DURATION, GET /products, $(nproc) CPUs, CPUs busy before start: $BUSY_BEFORE"
((ROUNDS == 1)) || echo "median of $ROUNDS rounds"
fmt='%-15s %10s %10s %12s %14s %12s\n'
# shellcheck disable=SC2059
printf "$fmt" proxy "req/s" "p99 ms" "CPU us/req" "CPU vs bare" "p99 vs nginx"
for name in "${PROXIES[@]}"; do
  # shellcheck disable=SC2059
  printf "$fmt" "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
    "$(ratio "${M_CPU[$name]}" "${M_CPU[bare]}")" "$(ratio "${M_P99[$name]}" "${M_P99[nginx]:-0}")"
done
if [[ -n "${M_CPU[canopy]:-}" && -n "${M_CPU[nometrics]:-}" ]]; then
  echo "metrics recording on/off, CPU us/req: $(ratio "${M_CPU[canopy]}" "${M_CPU[nometrics]}")  (nometrics = canopy with [proxy] metrics = false)"
fi
if ((ROUNDS > 1)); then
  echo "CPU us/req per round:"
  for name in "${PROXIES[@]}"; do printf '  %-15s%s\n' "$name" "${CPU[$name]}"; done
fi

echo
if ((HAVE_OHA)); then
  echo "oha fixed rate (2000 req/s, $CONNS connections, 10s), median p99:"
  for name in "${PROXIES[@]}"; do printf '  %-15s %s ms\n' "$name" "$(median "${OHA_P99[$name]}" %.3f)"; done
else
  echo "(oha not installed: fixed-rate latency pass skipped)"
fi
