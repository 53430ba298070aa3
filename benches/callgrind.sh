#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: exact and
# repeatable whatever else the machine is doing (unlike CPU time on this
# shared 2-core box). Compares canopy with the bare pingora pass-through
# (examples/bare_pingora.rs) on the same upstream and request.
#
#   bash benches/callgrind.sh            # N1=500 N2=2500 requests
#   KEEP=1 bash benches/callgrind.sh     # keep callgrind.out files for callgrind_annotate
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

cargo build --release --bin canopy --example upstream --example bare_pingora 2>&1 | tail -1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

UP=$(port)
target/release/examples/upstream juniper storefront=127.0.0.1:$UP 2>/dev/null &
PIDS+=($!)
wait_port "$UP"

# drive PORT N: N keep-alive GET /products, each must be 200
drive() {
  python3 - "$1" "$2" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for i in range(n):
    c.request("GET", "/products")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}

# run NAME N CMD...: the proxy under callgrind, N requests, SIGINT, total instructions
run() {
  local name=$1 n=$2 port=$3; shift 3
  local out="$TMP/callgrind.$name.$n"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" > "$TMP/$name.$n.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  wait_port "$port"
  drive "$port" 20   # warm the upstream connection pool
  drive "$port" "$n"
  kill -INT "$pid"
  wait "$pid" || true
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}

canopy_cfg() { # canopy_cfg PROXY_PORT ADMIN_PORT METRICS
  cat > "$TMP/canopy-$1.toml" <<EOF2
[proxy]
listen = "127.0.0.1:$1"
threads = 1
metrics = $3
[admin]
listen = "127.0.0.1:$2"
state-file = "state-$1.json"
[releases]
address-template = "x-{service}--{release}"
initial = "juniper"
[[release]]
name = "juniper"
backends = { storefront = ["127.0.0.1:$UP"] }
[[service]]
name = "storefront"
port = 4000
routes = ["/"]
EOF2
  echo "$TMP/canopy-$1.toml"
}

per_request() { echo "scale=0; ($2 - $1) / ($N2 - $N1)" | bc; }
printf '%-22s %14s\n' proxy "instr/request"
declare -A R
for variant in bare canopy canopy-nometrics; do
  totals=()
  for n in $N1 $N2; do
    p=$(port)
    case $variant in
      bare) totals+=("$(run bare "$n" "$p" target/release/examples/bare_pingora "127.0.0.1:$p" "127.0.0.1:$UP" 1)") ;;
      canopy) cfg=$(canopy_cfg "$p" "$(port)" true); totals+=("$(run canopy "$n" "$p" target/release/canopy serve -c "$cfg")") ;;
      canopy-nometrics) cfg=$(canopy_cfg "$p" "$(port)" false); totals+=("$(run canopy-nm "$n" "$p" target/release/canopy serve -c "$cfg")") ;;
    esac
  done
  R[$variant]=$(per_request "${totals[0]}" "${totals[1]}")
  printf '%-22s %14s\n' "$variant" "${R[$variant]}"
done
echo
printf 'canopy / bare:            %s\n' "$(echo "scale=3; ${R[canopy]} / ${R[bare]}" | bc)"
printf 'canopy metrics on / off:  %s\n' "$(echo "scale=3; ${R[canopy]} / ${R[canopy-nometrics]}" | bc)"
[ -z "${KEEP:-}" ] || echo "callgrind files kept in $TMP"
