#!/usr/bin/env bash
# Idle keep-alive memory: how much does each client connection that waits
# for its next request cost the proxy, compared with nginx and HAProxy?
#
#   bash benches/idle_memory.sh                          # all proxies, all modes
#   PLAIN_CONNS=5000 TLS_CONNS=3000 H2_CONNS=3000 bash benches/idle_memory.sh
#   PROXIES="canopy nginx" MODES="plain tls" bash benches/idle_memory.sh
#   CANOPY_BASE=/path/to/other/release/canopy bash benches/idle_memory.sh
#                                                        # adds "canopy-base" to the same run
#   NO_BUILD=1 ...                                       # use the release binaries already built
#
# Every proxy fronts the same upstream (examples/upstream.rs, plain HTTP/1.1
# keep-alive), one worker thread each (canopy `threads = 1`, nginx
# `worker_processes 1`, HAProxy `nbthread 1`), and keeps idle client
# connections for 300 s. For each mode, a fresh proxy is started, a few
# requests warm it up, and its RSS (VmRSS of the process and its children,
# i.e. nginx's worker) is read; then a Python client opens N connections,
# sends one `GET /products` on each (checking the 200 from the upstream) and
# keeps them all open and idle; after a second the RSS is read again.
#
#   (RSS with N idle connections - RSS before) / N = bytes per idle connection
#
# RSS is resident memory, so other load on the machine does not disturb it
# (unlike CPU figures). Kernel socket buffers are not in RSS (the same for
# every proxy).
#
# Modes (MODES picks them):
#   plain  HTTP/1.1 over TCP, PLAIN_CONNS connections
#   tls    HTTP/1.1 over TLS 1.3 (ALPN http/1.1), TLS_CONNS connections
#   h2     HTTP/2 over TLS 1.3 (ALPN h2), H2_CONNS connections, one stream each
#
# Needs: cargo, openssl, curl, python3; nginx and haproxy (skipped when
# missing). Everything binds 127.0.0.1 only. The client needs one file
# descriptor per connection (the script raises its soft limit).

set -euo pipefail

PLAIN_CONNS=${PLAIN_CONNS:-5000}
TLS_CONNS=${TLS_CONNS:-3000}
H2_CONNS=${H2_CONNS:-3000}
SETTLE=${SETTLE:-1}                 # seconds between the last request and the second RSS reading
READY_TIMEOUT=${READY_TIMEOUT:-15}  # seconds to wait for a process to answer
THREADS=1

cd "$(dirname "$0")/.."
. benches/common.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-idle.XXXXXX")
PIDS=()
trap exit_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in openssl curl python3; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
read -r -a MODES <<<"${MODES:-plain tls h2}"
declare -A CONNS=([plain]=$PLAIN_CONNS [tls]=$TLS_CONNS [h2]=$H2_CONNS)
for m in "${MODES[@]}"; do [[ -n ${CONNS[$m]:-} ]] || die "unknown mode $m (plain tls h2)"; done
max=0
for m in "${MODES[@]}"; do ((CONNS[$m] > max)) && max=${CONNS[$m]}; done
# the hard limit: HAProxy wants 2 x its maxconn (8192) descriptors
((max + 1024 <= $(ulimit -Hn))) || die "the file descriptor hard limit ($(ulimit -Hn)) is below $((max + 1024))"
ulimit -n "$(ulimit -Hn)"

if [[ -z ${NO_BUILD:-} ]]; then
  echo "== building release binaries"
  run cargo build --release --bin canopy --example upstream --example testkit
fi

make_cert   # common.sh: CERT, KEY and $TMP/haproxy.pem

# idle.py PORT N plain|tls|h2 CAFILE: opens N connections, one request each
# (200 with the upstream's body, else exit 1), prints "ready" and keeps them
# open until stdin closes.
cat >"$TMP/idle.py" <<'EOF'
import socket, ssl, struct, sys
port, n, mode, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
REQUEST = b"GET /products HTTP/1.1\r\nHost: localhost\r\n\r\n"

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def literal(index, value):  # HPACK literal without indexing, indexed name, no Huffman
    return bytes([index, len(value)]) + value

# :method GET, :scheme https, :path /products, :authority localhost
H2_HEADERS = b"\x82\x87" + literal(4, b"/products") + literal(1, b"localhost")

def recv_exact(s, k):
    out = b""
    while len(out) < k:
        chunk = s.recv(k - len(out))
        if not chunk:
            raise EOFError("connection closed")
        out += chunk
    return out

def http1(s):
    s.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    length = next(int(l.split(b":")[1]) for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:"))
    while len(body) < length:
        body += recv_exact(s, length - len(body))
    assert b'"release":"juniper"' in body, body[:60]

def h2(s):
    assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, H2_HEADERS))
    status, body, done = None, b"", False
    while not done:
        length, kind, flags, stream = struct.unpack(">IBBI", b"\0" + recv_exact(s, 9))
        payload = recv_exact(s, length)
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0))  # SETTINGS ack
        elif kind == 7:
            raise EOFError(f"GOAWAY {payload!r}")
        elif stream == 1 and kind == 1:
            status = status or payload[:1]
        elif stream == 1 and kind == 0:
            body += payload
        done = stream == 1 and kind in (0, 1) and flags & 1
    assert status == b"\x88", status  # :status 200 (HPACK static index 8)
    assert b'"release":"juniper"' in body, body[:60]

conns = []
for i in range(n):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = raw if mode == "plain" else ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        (h2 if mode == "h2" else http1)(s)
    except Exception as e:
        print(f"connection {i}: {e!r}", file=sys.stderr)
        sys.exit(1)
    conns.append(s)
print("ready", flush=True)
sys.stdin.read()
# still open: the proxy must not have closed them while idle
closed = sum(1 for s in conns if s.fileno() < 0)
print(f"closed {closed}", flush=True)
EOF

start_upstream
UPSTREAM=127.0.0.1:$UP

# Each start_* starts the proxy (idle connections kept 300 s) and sets
# PROXY_PID, PLAIN_PORT and TLS_PORT.
start_canopy_with() { # start_canopy_with NAME BINARY
  local name=$1 bin=$2 port tls admin
  read -r port tls admin <<<"$(free_ports 3)"
  canopy_tls_cfg "$TMP/$name.toml" "$port" "$tls" "$admin" "$UPSTREAM" \
    "threads = $THREADS"$'\nclient-timeout = "300s"\nshutdown-grace = "1s"' >/dev/null
  "$bin" serve -c "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
  PROXY_PID=$! PLAIN_PORT=$port TLS_PORT=$tls
}
start_canopy() { start_canopy_with canopy "$REL/canopy"; }
start_canopy-base() { start_canopy_with canopy-base "$CANOPY_BASE"; }

start_nginx() {
  local port tls
  read -r port tls <<<"$(free_ports 2)"
  nginx_conf "$TMP/nginx" "$port" "$UPSTREAM" "$THREADS" "    listen 127.0.0.1:$tls ssl http2;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_timeout 300s;
    http2_idle_timeout 300s;" >/dev/null
  /usr/sbin/nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.log" 2>&1 &
  PROXY_PID=$! PLAIN_PORT=$port TLS_PORT=$tls
}

start_haproxy() {
  local port tls
  read -r port tls <<<"$(free_ports 2)"
  haproxy_cfg "$TMP/haproxy.cfg" "$port" "$UPSTREAM" "$THREADS" \
    "  bind 127.0.0.1:$tls ssl crt $TMP/haproxy.pem alpn h2,http/1.1
  timeout client 300s
  timeout http-keep-alive 300s" >/dev/null
  /usr/sbin/haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
  PROXY_PID=$! PLAIN_PORT=$port TLS_PORT=$tls
}

pick_proxies ${CANOPY_BASE:+canopy-base}

# rss_kb PID: VmRSS of PID and its direct children (nginx's worker), in KiB
rss_kb() {
  local total=0 p kb
  for p in "$1" $(pgrep -P "$1" || true); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

declare -A PER_CONN
measure() { # measure NAME MODE
  local name=$1 mode=$2 n=${CONNS[$2]} url port before after client
  "start_$name"
  PIDS+=("$PROXY_PID")
  port=$TLS_PORT
  [[ $mode != plain ]] || port=$PLAIN_PORT
  url=https://localhost:$TLS_PORT/products
  wait_http "$name" "$PROXY_PID" "$url" --cacert "$CERT" --resolve "localhost:$TLS_PORT:127.0.0.1"
  # warm-up: the same client, a few connections, closed again
  python3 "$TMP/idle.py" "$port" 20 "$mode" "$CERT" </dev/null >/dev/null || die "$name $mode: warm-up failed"
  sleep "$SETTLE"
  before=$(rss_kb "$PROXY_PID")
  mkfifo "$TMP/hold"
  python3 "$TMP/idle.py" "$port" "$n" "$mode" "$CERT" <"$TMP/hold" >"$TMP/idle.out" 2>"$TMP/idle.err" &
  client=$!
  PIDS+=("$client")
  exec 7>"$TMP/hold"
  for _ in $(seq 600); do
    grep -q ready "$TMP/idle.out" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || { cat "$TMP/idle.err" >&2; die "$name $mode: client failed"; }
    sleep 0.1
  done
  grep -q ready "$TMP/idle.out" || die "$name $mode: $n connections not ready within 60 s"
  sleep "$SETTLE"
  after=$(rss_kb "$PROXY_PID")
  exec 7>&-   # the client closes its connections and exits
  wait "$client" || true
  forget "$client"
  rm -f "$TMP/hold"
  PER_CONN[$name/$mode]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.2f", (a - b) * 1024 / n / 1000}')
  printf '   %-12s %-6s %6d connections: RSS %7d KiB -> %7d KiB = %6.2f KB per idle connection\n' \
    "$name" "$mode" "$n" "$before" "$after" "${PER_CONN[$name/$mode]}"
  stop_pid "$PROXY_PID"
  forget "$PROXY_PID"
}

echo "== upstream on $UPSTREAM; each proxy one worker thread, a fresh process per mode"
for mode in "${MODES[@]}"; do
  for name in "${PROXIES[@]}"; do measure "$name" "$mode"; done
done

echo
echo "idle keep-alive connections, one GET /products each, RSS delta per connection (KB = 1000 bytes)"
fmt='%-8s %-12s %12s %10s %11s\n'
# shellcheck disable=SC2059
printf "$fmt" mode proxy connections "KB/conn" "vs nginx"
for mode in "${MODES[@]}"; do
  for name in "${PROXIES[@]}"; do
    # shellcheck disable=SC2059
    printf "$fmt" "$mode" "$name" "${CONNS[$mode]}" "${PER_CONN[$name/$mode]}" \
      "$(ratio "${PER_CONN[$name/$mode]}" "${PER_CONN[nginx/$mode]:-0}")"
  done
done
