#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: exact and
# repeatable whatever else the machine is doing (unlike CPU time on this
# shared 2-core box). Compares canopy with the bare pingora pass-through
# (examples/bare_pingora.rs) on the same upstream and request.
#
#   bash benches/callgrind.sh            # N1=500 N2=2500 requests
#   KEEP=1 bash benches/callgrind.sh     # keep callgrind.out files for callgrind_annotate
#   FRESH=1 bash benches/callgrind.sh    # a new TCP connection per request (Connection: close)
#   VARIANTS=canopy bash benches/callgrind.sh   # only some of: bare bare-forward canopy canopy-nometrics canopy-canary canopy-fleet
#                                        # (canopy-canary: a canary at 50% is running; the client sends no
#                                        # cookie, so every answer sets one: the canary's worst case;
#                                        # canopy-fleet: the same binary with [cluster], a one-member etcd)
#   CANOPY_BASE=/path/to/older/canopy VARIANTS="canopy-base canopy" bash benches/callgrind.sh
#                                        # before/after: another canopy build on the same config, same run
#   NO_BUILD=1 bash benches/callgrind.sh # use the release binaries already built
#   H2=1 VARIANTS="canopy-base canopy" bash benches/callgrind.sh
#                                        # HTTP/2 over TLS (h2load, one connection, H2_STREAMS=1
#                                        # stream at a time; 16: always streams open), canopy only
#
# Each proxy runs twice under callgrind (N1 and N2 keep-alive GETs from one
# client); (instr(N2) - instr(N1)) / (N2 - N1) cancels start-up and shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-500}
N2=${N2:-2500}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-callgrind.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$TMP"; }
trap cleanup EXIT

[ -n "${NO_BUILD:-}" ] || cargo build --release --bin canopy --example upstream --example bare_pingora --example testkit 2>&1 | tail -1
. benches/common.sh

start_upstream

# run NAME N CMD...: the proxy under callgrind, N requests, SIGINT, total instructions
run() {
  local name=$1 n=$2 port=$3; shift 3
  local out="$TMP/callgrind.$name.$n"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" > "$TMP/$name.$n.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  wait_port "$port"
  [ -z "${SETUP:-}" ] || $SETUP   # e.g. start a canary through the admin API
  ${DRIVER:-drive} "${DRIVE_PORT:-$port}" 20   # warm the upstream connection pool
  ${DRIVER:-drive} "${DRIVE_PORT:-$port}" "$n"
  kill -INT "$pid"
  wait "$pid" || true
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}

# run_canopy NAME BINARY METRICS N PORT: `run` for a canopy binary on one
# thread (with H2=1: driven over h2 on a TLS listener)
run_canopy() {
  local cfg
  if [ -n "${H2:-}" ]; then
    local tls
    tls=$(port)
    cfg=$(canopy_tls_cfg "$TMP/canopy-$5.toml" "$5" "$tls" "$(port)" "127.0.0.1:$UP" "threads = 1"$'\n'"metrics = $3")
    DRIVER=drive_h2 DRIVE_PORT=$tls run "$1" "$4" "$5" "$2" serve -c "$cfg"
  else
    cfg=$(canopy_cfg "$TMP/canopy-$5.toml" "$5" "$(port)" "127.0.0.1:$UP" "threads = 1"$'\n'"metrics = $3")
    run "$1" "$4" "$5" "$2" serve -c "$cfg"
  fi
}

# drive_h2 TLS_PORT N: N GETs over one h2 connection, H2_STREAMS at a time
drive_h2() {
  local out
  out=$(h2load -n "$2" -c 1 -m "${H2_STREAMS:-1}" "https://127.0.0.1:$1/products" 2>&1)
  grep -q "status codes: $2 2xx" <<<"$out" || { echo "h2load: not $2 answers 2xx:" >&2; echo "$out" >&2; exit 1; }
}

# canary_on ADMIN_PORT: registers `elm` on the same upstream and starts a 50% canary of it
canary_on() {
  curl -sf -X PUT "http://127.0.0.1:$1/releases/elm" -H 'content-type: application/json' \
    -d "{\"backends\": {\"storefront\": [\"127.0.0.1:$UP\"]}}" > /dev/null
  curl -sf -X POST "http://127.0.0.1:$1/switch" -H 'content-type: application/json' \
    -d '{"release": "elm", "canary": [50]}' > /dev/null
}

# run_canary NAME BINARY N PORT: `run_canopy` with a canary running
run_canary() {
  local admin cfg
  admin=$(port)
  cfg=$(canopy_cfg "$TMP/canopy-$4.toml" "$4" "$admin" "127.0.0.1:$UP" "threads = 1")
  SETUP="canary_on $admin" run "$1" "$3" "$4" "$2" serve -c "$cfg"
}

# start_etcd: a one-member etcd (Debian's) in $TMP on free ports; sets ETCD_PORT
start_etcd() {
  ETCD_PORT=$(port)
  local peer
  peer=$(port)
  etcd --name cg --data-dir "$TMP/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "cg=http://127.0.0.1:$peer" > "$TMP/etcd.log" 2>&1 &
  PIDS+=($!)
  wait_port "$ETCD_PORT"
}

# run_fleet NAME BINARY N PORT: `run_canopy` as a fleet node ([cluster], its own prefix)
run_fleet() {
  [ -n "${ETCD_PORT:-}" ] || start_etcd
  local cfg
  cfg=$(canopy_cfg "$TMP/canopy-$4.toml" "$4" "$(port)" "127.0.0.1:$UP" "threads = 1")
  printf '\n[cluster]\netcd = ["http://127.0.0.1:%s"]\nnode = "cg"\nprefix = "/callgrind/%s"\n' "$ETCD_PORT" "$4" >> "$cfg"
  run "$1" "$3" "$4" "$2" serve -c "$cfg"
}

if [ -n "${H2:-}" ]; then
  command -v h2load >/dev/null || { echo "H2=1 needs h2load (nghttp2-client)" >&2; exit 1; }
  for v in ${VARIANTS:-}; do [[ $v == canopy || $v == canopy-base || $v == canopy-nometrics ]] || { echo "H2=1: canopy variants only (not $v)" >&2; exit 1; }; done
  [ -n "${VARIANTS:-}" ] || VARIANTS="canopy canopy-nometrics"
  make_cert
fi
per_request() { echo "scale=0; ($2 - $1) / ($N2 - $N1)" | bc; }
printf '%-22s %14s\n' proxy "instr/request"
declare -A R
for variant in ${VARIANTS:-bare bare-forward canopy canopy-nometrics}; do
  totals=()
  for n in $N1 $N2; do
    p=$(port)
    case $variant in
      bare) totals+=("$(run bare "$n" "$p" $REL/examples/bare_pingora "127.0.0.1:$p" "127.0.0.1:$UP" 1)") ;;
      bare-forward) totals+=("$(run bare-forward "$n" "$p" $REL/examples/bare_pingora "127.0.0.1:$p" "127.0.0.1:$UP" 1 steal forward)") ;;
      canopy) totals+=("$(run_canopy canopy $REL/canopy true "$n" "$p")") ;;
      canopy-base) totals+=("$(run_canopy canopy-base "${CANOPY_BASE:?CANOPY_BASE=path of the canopy binary to compare with}" true "$n" "$p")") ;;
      canopy-nometrics) totals+=("$(run_canopy canopy-nm $REL/canopy false "$n" "$p")") ;;
      canopy-canary) totals+=("$(run_canary canopy-canary $REL/canopy "$n" "$p")") ;;
      canopy-fleet) totals+=("$(run_fleet canopy-fleet $REL/canopy "$n" "$p")") ;;
    esac
  done
  R[$variant]=$(per_request "${totals[0]}" "${totals[1]}")
  printf '%-22s %14s\n' "$variant" "${R[$variant]}"
done
echo
[ -z "${R[canopy]:-}" ] || [ -z "${R[bare]:-}" ] || printf 'canopy / bare:            %s\n' "$(echo "scale=3; ${R[canopy]} / ${R[bare]}" | bc)"
[ -z "${R[canopy]:-}" ] || [ -z "${R[bare-forward]:-}" ] || printf 'canopy / bare-forward:    %s\n' "$(echo "scale=3; ${R[canopy]} / ${R[bare-forward]}" | bc)"
[ -z "${R[canopy]:-}" ] || [ -z "${R[canopy-nometrics]:-}" ] || printf 'canopy metrics on / off:  %s\n' "$(echo "scale=3; ${R[canopy]} / ${R[canopy-nometrics]}" | bc)"
[ -z "${R[canopy]:-}" ] || [ -z "${R[canopy-base]:-}" ] || printf 'canopy / canopy-base:     %s\n' "$(echo "scale=4; ${R[canopy]} / ${R[canopy-base]}" | bc)"
[ -z "${R[canopy-canary]:-}" ] || [ -z "${R[canopy]:-}" ] || printf 'canary active / idle:     %s\n' "$(echo "scale=4; ${R[canopy-canary]} / ${R[canopy]}" | bc)"
[ -z "${R[canopy-canary]:-}" ] || [ -z "${R[canopy-base]:-}" ] || printf 'canary / canopy-base:     %s\n' "$(echo "scale=4; ${R[canopy-canary]} / ${R[canopy-base]}" | bc)"
[ -z "${R[canopy-fleet]:-}" ] || [ -z "${R[canopy]:-}" ] || printf 'fleet node / single:      %s\n' "$(echo "scale=4; ${R[canopy-fleet]} / ${R[canopy]}" | bc)"
[ -z "${KEEP:-}" ] || echo "callgrind files kept in $TMP"
