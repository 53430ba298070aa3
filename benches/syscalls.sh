#!/usr/bin/env bash
# System calls per proxied request, counted by strace: canopy vs bare pingora
# vs nginx, same upstream, one keep-alive client, N requests (exact counts,
# unaffected by how busy the machine is; strace slows the proxies down, so
# read the counts, not the times).
#
#   bash benches/syscalls.sh            # N=2000
#
# Needs strace, nginx (optional), python3. Everything binds 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-syscalls.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
cargo build --release --bin canopy --example upstream --example bare_pingora 2>&1 | tail -1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
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
UP=$(port)
target/release/examples/upstream juniper storefront=127.0.0.1:$UP 2>/dev/null &
PIDS+=($!)
wait_port "$UP"
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
p=$(port); target/release/examples/bare_pingora "127.0.0.1:$p" "127.0.0.1:$UP" 1 2>/dev/null & PIDS+=($!); wait_port "$p"; measure bare "$p" "$!"
p=$(port); a=$(port)
cat > "$TMP/canopy.toml" <<EOF2
[proxy]
listen = "127.0.0.1:$p"
threads = 1
[admin]
listen = "127.0.0.1:$a"
state-file = "state.json"
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
target/release/canopy serve -c "$TMP/canopy.toml" 2>/dev/null & PIDS+=($!); wait_port "$p"; measure canopy "$p" "$!"
if [[ -x /usr/sbin/nginx ]]; then
  p=$(port); mkdir -p "$TMP/nginx"
  cat > "$TMP/nginx/nginx.conf" <<EOF2
daemon off;
worker_processes 1;
error_log $TMP/nginx/error.log warn;
pid $TMP/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  upstream u { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$p; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF2
  /usr/sbin/nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" 2>/dev/null & PIDS+=($!); wait_port "$p"
  sleep 0.3
  measure nginx "$p" "$(pgrep -P "$!" | head -1)"
fi
