#!/usr/bin/env bash
# HTTPS and HTTP/2: what does canopy (rustls with ring, pingora's h2) cost per
# request with TLS terminated at the proxy, compared with nginx and HAProxy
# (OpenSSL)?
#
#   bash benches/tls.sh                       # one round, DURATION=4s per scenario
#   ROUNDS=3 bash benches/tls.sh              # medians of 3 rounds
#   PROXIES="canopy nginx" SCENARIOS="h2 resumed" DURATION=10s bash benches/tls.sh
#   NEWCONN_CLIENTS=3 H1_CONNS=64 H2_CONNS=4 H2_STREAMS=32 bash benches/tls.sh
#   CANOPY_BASE=/path/to/other/release/canopy bash benches/tls.sh   # adds "canopy-base" to the run
#
# Every proxy fronts the same upstream (examples/upstream.rs, plain HTTP/1.1
# keep-alive) and terminates TLS on 127.0.0.1 with the same ECDSA P-256
# certificate (made here with openssl), one worker thread each (canopy
# `threads = 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`). The
# clients offer TLS 1.3 with TLS_AES_128_GCM_SHA256 only, so every proxy
# negotiates the same suite; what was negotiated is printed.
#
# Scenarios (SCENARIOS picks them), each a WARMUP run, then DURATION measured:
#   h1plain   baseline without TLS: HTTP/1.1 keep-alive to the plaintext
#             listener, same client as h1
#   h1        HTTP/1.1 on keep-alive TLS connections: h2load --h1 -c H1_CONNS
#   h2        HTTP/2 over TLS (ALPN h2): h2load -c H2_CONNS -m H2_STREAMS
#   plain     baseline without TLS: a new TCP connection per request to the
#             plaintext listener, same client as full and resumed
#   kaplain   the clients of plain, each keeping one connection for all its
#             requests: plain minus kaplain is what a new connection costs
#             (accept, set-up, close), with the same requests and wake-ups
#   full      every request on a new TLS connection, full handshake
#   resumed   every request on a new TLS connection resuming the session of
#             the client's previous connection (TLS 1.3 session ticket)
# plain, full and resumed: NEWCONN_CLIENTS Python clients (ssl module, ALPN
# http/1.1), each connecting, sending `GET /products` with `Connection:
# close`, reading to the end and closing, again and again. The clients verify
# the certificate and count connections the server resumed (`session_reused`);
# the table shows that share, and an `openssl s_client -sess_out/-sess_in`
# probe per proxy checks resumption independently. The baselines say how
# much of each proxy's cost is TLS and how much the proxying itself.
#
# CPU as in load.sh: utime+stime of the proxy (all threads, and nginx's
# worker) from /proc/PID/stat before and after the measured run, divided by
# the requests answered 200, so the clients' CPU is not counted; "of it
# user" is the utime part (the rest is the kernel's work for the proxy's
# system calls and its sockets). Run on an
# otherwise idle machine (the script prints how busy the CPUs were before it
# started); single rounds vary, use ROUNDS=3.
#
# Needs: cargo, h2load (nghttp2-client), openssl, curl, python3; nginx and
# haproxy (skipped when missing). Everything binds 127.0.0.1 only.

set -euo pipefail

ROUNDS=${ROUNDS:-1}                 # repeat everything; the table shows medians
DURATION=${DURATION:-4s}            # measured time per scenario (seconds, "s" optional)
WARMUP=${WARMUP:-1s}                # unmeasured run before each scenario
H1_CONNS=${H1_CONNS:-32}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-16}
NEWCONN_CLIENTS=${NEWCONN_CLIENTS:-2}
TLS13_CIPHER=${TLS13_CIPHER:-TLS_AES_128_GCM_SHA256}
THREADS=1                           # one worker thread per proxy
READY_TIMEOUT=${READY_TIMEOUT:-15}  # seconds to wait for a process to answer

cd "$(dirname "$0")/.."
. benches/common.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-tls.XXXXXX")
PIDS=()
trap exit_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DUR=${DURATION%s} WARM=${WARMUP%s}
[[ $DUR =~ ^[0-9]+$ && $WARM =~ ^[0-9]+$ ]] || die "DURATION and WARMUP are whole seconds (e.g. 4s)"
for tool in h2load openssl curl python3; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

# ---------------------------------------------------------------- build
echo "== building release binaries"
run cargo build --release --bin canopy --example upstream --example testkit

busy_before
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- certificate
# One self-signed ECDSA P-256 certificate for localhost and 127.0.0.1; the
# clients send SNI "localhost" and trust exactly this certificate.
make_cert   # common.sh: CERT, KEY and $TMP/haproxy.pem

# Python's ssl module cannot choose TLS 1.3 suites: an OpenSSL config for the
# clients (only) does.
cat >"$TMP/openssl-client.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = tls_client
[tls_client]
Ciphersuites = $TLS13_CIPHER
EOF

# The new-connection client: newconn.py PORT SECONDS plain|keepalive|full|resumed CAFILE
# (keepalive: plaintext, one connection for all requests)
# prints "ok failed resumed seconds version cipher alpn".
cat >"$TMP/newconn.py" <<'EOF'
import socket, ssl, sys, time
port, secs, mode, ca = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["http/1.1"])
request = b"GET /products HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
ok = failed = resumed = 0
session, first, error = None, None, None
start = time.monotonic()
if mode == "keepalive":
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() - start < secs:
        try:
            c.request("GET", "/products", headers={"Host": "localhost"})
            r = c.getresponse()
            body = r.read()
            if r.status == 200 and b'"release":"juniper"' in body:
                ok += 1
            else:
                failed += 1
                error = error or f"{r.status} {body[:60]!r}"
        except (OSError, http.client.HTTPException) as e:
            failed += 1
            error = error or repr(e)
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    secs = 0  # not the new-connection loop below
while time.monotonic() - start < secs:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            s = raw if mode == "plain" else ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            with s:
                s.sendall(request)
                response = bytearray()
                while chunk := s.recv(65536):
                    response += chunk
                if s is not raw:
                    resumed += s.session_reused
                    first = first or (s.version(), s.cipher()[0], s.selected_alpn_protocol())
                if mode == "resumed":
                    # after the response: TLS 1.3 tickets come after the handshake
                    session = s.session
        if response.startswith(b"HTTP/1.1 200") and b'"release":"juniper"' in response:
            ok += 1
        else:
            failed += 1
            error = error or bytes(response[:60])
    except (OSError, ssl.SSLError) as e:
        failed += 1
        error = error or repr(e)
elapsed = time.monotonic() - start
if error:
    print(f"first failure: {error}", file=sys.stderr)
print(ok, failed, resumed, f"{elapsed:.3f}", *(first or ("plain", "-", "-")))
EOF

# ---------------------------------------------------------------- upstream and proxies
start_upstream   # common.sh: examples/upstream on UP, in PIDS
UPSTREAM=127.0.0.1:$UP
read -r CANOPY_PORT CANOPY_TLS ADMIN_PORT NGINX_PORT NGINX_TLS HAPROXY_PORT HAPROXY_TLS <<<"$(free_ports 7)"
echo "== upstream on $UPSTREAM; proxies get $THREADS worker thread, TLS 1.3 $TLS13_CIPHER (clients), ECDSA P-256"

# Each start_* starts the proxy and sets PROXY_PID, PLAIN_PORT and TLS_PORT.
start_canopy_with() { # start_canopy_with NAME BINARY (each proxy runs alone: the ports are shared)
  canopy_tls_cfg "$TMP/$1.toml" "$CANOPY_PORT" "$CANOPY_TLS" "$ADMIN_PORT" "$UPSTREAM" \
    "threads = $THREADS"$'\nshutdown-grace = "1s"' >/dev/null
  "$2" check-config -c "$TMP/$1.toml" >"$TMP/$1.log" 2>&1 || { cat "$TMP/$1.log" >&2; die "$1 check-config failed"; }
  "$2" serve -c "$TMP/$1.toml" >"$TMP/$1.log" 2>&1 &
  PROXY_PID=$! PLAIN_PORT=$CANOPY_PORT TLS_PORT=$CANOPY_TLS
}
start_canopy() { start_canopy_with canopy "$REL/canopy"; }
start_canopy-base() { start_canopy_with canopy-base "${CANOPY_BASE:?CANOPY_BASE=path of the canopy binary to compare with}"; }

start_nginx() {
  # keepalive_requests: nginx closes a connection after 1000 requests by
  # default (HTTP/1.1 and h2); canopy and HAProxy set no such limit
  nginx_conf "$TMP/nginx" "$NGINX_PORT" "$UPSTREAM" "$THREADS" "    listen 127.0.0.1:$NGINX_TLS ssl http2;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    keepalive_requests 1000000;" >/dev/null
  /usr/sbin/nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.log" 2>&1 &
  PROXY_PID=$! PLAIN_PORT=$NGINX_PORT TLS_PORT=$NGINX_TLS
}

start_haproxy() {
  haproxy_cfg "$TMP/haproxy.cfg" "$HAPROXY_PORT" "$UPSTREAM" "$THREADS" \
    "  bind 127.0.0.1:$HAPROXY_TLS ssl crt $TMP/haproxy.pem alpn h2,http/1.1" >/dev/null
  /usr/sbin/haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
  PROXY_PID=$! PLAIN_PORT=$HAPROXY_PORT TLS_PORT=$HAPROXY_TLS
}

pick_proxies ${CANOPY_BASE:+canopy-base}
read -r -a SCENARIOS <<<"${SCENARIOS:-h1plain h1 h2 plain kaplain full resumed}"
declare -A LABEL=([h1plain]=h1-plain [h1]=h1-keepalive [h2]=h2 [plain]=newconn-plain [kaplain]=keepalive-plain [full]=newconn-full [resumed]=newconn-resumed)
for sc in "${SCENARIOS[@]}"; do [[ -n ${LABEL[$sc]:-} ]] || die "unknown scenario $sc (h1plain h1 h2 plain kaplain full resumed)"; done

# ---------------------------------------------------------------- load
# Each load_SCENARIO SECONDS runs the clients against TLS_PORT (PLAIN_PORT) and sets
# N_OK (requests answered 200), N_BAD, RATE (req/s), NEG (what was
# negotiated) and REUSED ("resumed/connections", or "-").

h2load_run() { # h2load_run SECONDS URL H2LOAD_ARGS...
  local secs=$1 url=$2 out=$TMP/h2load.out
  shift 2
  run h2load -D "$secs" --tls13-ciphers="$TLS13_CIPHER" "$@" "$url" >"$out" 2>&1 || { tail -n 20 "$out" >&2; die "h2load failed"; }
  # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"; "requests: N total, N started,
  # N done, N succeeded, N failed (errored and timed out included), ..."; "finished in 5.00s, R req/s, ..."
  N_OK=$(awk '/^status codes:/ {print $3}' "$out")
  N_BAD=$(awk '/^requests:/ {b += $10} /^status codes:/ {b += $5 + $7 + $9} END {print b + 0}' "$out")
  RATE=$(awk '/^finished in/ {printf "%.0f", $4}' "$out")
  NEG=$(awk -F': ' '/^TLS Protocol:/ {v = $2} /^Cipher:/ {c = $2} /^Server Temp Key:/ {k = $2} /^Application protocol:/ {a = $2}
    END {sub(/ .*/, "", k); print v ? v " " c " " k " " a : "plain"}' "$out")
  REUSED=-
}
load_h1plain() { h2load_run "$1" "http://127.0.0.1:$PLAIN_PORT/products" --h1 -c "$H1_CONNS"; }
load_h1() { h2load_run "$1" "https://localhost:$TLS_PORT/products" --connect-to="127.0.0.1:$TLS_PORT" --h1 -c "$H1_CONNS"; }
load_h2() { h2load_run "$1" "https://localhost:$TLS_PORT/products" --connect-to="127.0.0.1:$TLS_PORT" -c "$H2_CONNS" -m "$H2_STREAMS"; }

newconn_run() { # newconn_run SECONDS plain|keepalive|full|resumed
  local i pids=() out port=$TLS_PORT
  [[ $2 != plain && $2 != keepalive ]] || port=$PLAIN_PORT
  for ((i = 0; i < NEWCONN_CLIENTS; i++)); do
    OPENSSL_CONF=$TMP/openssl-client.cnf python3 "$TMP/newconn.py" "$port" "$1" "$2" "$CERT" >"$TMP/newconn.out.$i" 2>"$TMP/newconn.err.$i" &
    pids+=("$!")
    PIDS+=("$!")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { cat "$TMP/newconn.err.$i" >&2; die "new-connection client failed"; }
    forget "${pids[$i]}"
  done
  out=$(cat "$TMP"/newconn.out.*)
  cat "$TMP"/newconn.err.* >&2   # a client's first failure, if any
  read -r N_OK N_BAD RATE REUSED < <(awk '{ok += $1; bad += $2; re += $3; t += $4}
    END {printf "%d %d %.0f %d/%d\n", ok, bad, ok / (t / NR), re, ok + bad}' <<<"$out")
  NEG="$(awk 'NR == 1 {print $5 == "plain" ? "plain" : $5 " " $6 " (see probe) " $7}' <<<"$out")"
  [[ $2 != plain && $2 != keepalive ]] || REUSED=-
}
load_plain() { newconn_run "$1" plain; }
load_kaplain() { newconn_run "$1" keepalive; }
load_full() { newconn_run "$1" full; }
load_resumed() { newconn_run "$1" resumed; }

# probe_resumption NAME: openssl s_client, once with -sess_out and once
# with -sess_in; records the handshake of both in PROBE[NAME].
declare -A PROBE
probe_resumption() {
  local common=(-connect "127.0.0.1:$TLS_PORT" -servername localhost -tls1_3 -ciphersuites "$TLS13_CIPHER"
    -alpn http/1.1 -CAfile "$CERT" -verify_return_error -ign_eof) first second
  local req='GET /products HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
  rm -f "$TMP/session.pem"
  # shellcheck disable=SC2059
  printf "$req" | timeout 10 openssl s_client "${common[@]}" -sess_out "$TMP/session.pem" >"$TMP/$1.probe1" 2>&1 || true
  # shellcheck disable=SC2059
  printf "$req" | timeout 10 openssl s_client "${common[@]}" -sess_in "$TMP/session.pem" >"$TMP/$1.probe2" 2>&1 || true
  first=$(awk '/^(New|Reused), TLSv/ {sub(/,$/, "", $2); s = $1 " " $2 " " $5} /^Server Temp Key:/ {sub(/,$/, "", $4); k = $4}
    /^Peer signature type:/ {p = $4} /^Verification: OK/ {v = ", certificate verified"} END {print s, k, p v}' "$TMP/$1.probe1")
  # a TLS 1.3 resumption still runs a key exchange (psk_dhe_ke): shown as the temp key
  second=$(awk '/^(New|Reused), TLSv/ {sub(/,$/, "", $1); s = $1} /^Server Temp Key:/ {sub(/,$/, "", $4); k = $4}
    END {print s, k}' "$TMP/$1.probe2")
  PROBE[$1]="first: ${first:-no handshake}; second with the first's session: ${second:-no handshake}"
}

# ---------------------------------------------------------------- measure
declare -A REQS RPS CPU USER RESUMED NEGOTIATED
measure() { # measure NAME: start the proxy, check it, run the scenarios, stop it
  local name=$1 headers before after cpu sc
  echo "== $name"
  "start_$name"
  PIDS+=("$PROXY_PID")
  local url=https://localhost:$TLS_PORT/products curl_tls=(--cacert "$CERT" --resolve "localhost:$TLS_PORT:127.0.0.1")
  wait_http "$name" "$PROXY_PID" "$url" "${curl_tls[@]}"

  # correctness first: 200 from the upstream over HTTP/1.1 and over h2
  for v in --http1.1 --http2; do
    headers=$(curl -sS -D - -o "$TMP/$name.body" --max-time 2 "${curl_tls[@]}" "$v" "$url")
    [[ $(head -n 1 <<<"$headers") =~ ^HTTP/(1\.1|2)\ 200 ]] || die "$name ($v): GET /products answered $(head -n 1 <<<"$headers")"
    [[ $v == --http1.1 || ${BASH_REMATCH[1]} == 2 ]] || die "$name did not speak h2 by ALPN"
    grep -q '"release":"juniper"' "$TMP/$name.body" || die "$name: body did not come from the upstream"
  done
  [[ $name != canopy ]] || grep -qi '^x-canopy-release: juniper' <<<"$headers" || die "canopy: response lacks x-canopy-release: juniper"
  [[ -n ${PROBE[$name]:-} ]] || probe_resumption "$name"

  for sc in "${SCENARIOS[@]}"; do
    "load_$sc" "$WARM"
    before=$(cpu_ticks "$PROXY_PID") user_before=$(cpu_ticks "$PROXY_PID" user)
    "load_$sc" "$DUR"
    after=$(cpu_ticks "$PROXY_PID") user_after=$(cpu_ticks "$PROXY_PID" user)
    ((N_OK > 0)) || die "$name $sc: no request answered"
    cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$N_OK" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    user=$(awk -v t=$((user_after - user_before)) -v hz="$CLK_TCK" -v n="$N_OK" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    REQS[$name/$sc]+=" $N_OK" RPS[$name/$sc]+=" $RATE" CPU[$name/$sc]+=" $cpu" USER[$name/$sc]+=" $user" RESUMED[$name/$sc]+=" $REUSED"
    NEGOTIATED[$name/$sc]=$NEG
    printf '   %-16s %8d requests, %6d req/s, CPU %4d ticks = %7.2f us/req%s%s\n' "${LABEL[$sc]}" "$N_OK" "$RATE" \
      $((after - before)) "$cpu" "$([[ $REUSED == - ]] || echo ", resumed $REUSED")" "$( ((N_BAD == 0)) || echo ", $N_BAD FAILED")"
  done

  stop_pid "$PROXY_PID"   # one proxy at a time: nothing else competes for CPU
  forget "$PROXY_PID"
}

for ((round = 1; round <= ROUNDS; round++)); do
  ((ROUNDS == 1)) || echo "-- round $round of $ROUNDS"
  for name in "${PROXIES[@]}"; do measure "$name"; done
done

# ---------------------------------------------------------------- report
share() { # share " a/b c/d ...": resumed share over all rounds, as a percentage
  tr ' ' '\n' <<<"$1" | awk -F/ 'NF == 2 {r += $1; n += $2} END {if (n) printf "%.1f%%", 100 * r / n; else print "-"}'
}
echo
echo "TLS 1.3 $TLS13_CIPHER offered by the clients, ECDSA P-256 certificate, 1 worker thread per proxy, upstream plain HTTP/1.1 keep-alive"
echo "h1-plain/h1-keepalive: h2load --h1 -c$H1_CONNS; h2: h2load -c$H2_CONNS -m$H2_STREAMS; newconn-*: $NEWCONN_CLIENTS Python clients, a new connection per request; keepalive-plain: the same clients, one connection each"
echo "h1-plain and newconn-plain: baselines without TLS (plaintext listener, same clients)"
echo "${DUR}s measured per scenario after ${WARM}s warm-up, GET /products, $(nproc) CPUs, CPUs busy before start: $BUSY_BEFORE, load average $LOADAVG"
((ROUNDS == 1)) || echo "median of $ROUNDS rounds"
fmt='%-16s %-8s %10s %8s %11s %9s %8s %9s %11s\n'
# shellcheck disable=SC2059
printf "$fmt" scenario proxy requests "req/s" "CPU us/req" "of it user" resumed "vs nginx" "vs haproxy"
declare -A M_CPU
for sc in "${SCENARIOS[@]}"; do
  for name in "${PROXIES[@]}"; do M_CPU[$name/$sc]=$(median "${CPU[$name/$sc]}" %.2f); done
  for name in "${PROXIES[@]}"; do
    # shellcheck disable=SC2059
    printf "$fmt" "${LABEL[$sc]}" "$name" "$(median "${REQS[$name/$sc]}" %.0f)" "$(median "${RPS[$name/$sc]}" %.0f)" \
      "${M_CPU[$name/$sc]}" "$(median "${USER[$name/$sc]}" %.2f)" "$(share "${RESUMED[$name/$sc]}")" \
      "$(ratio "${M_CPU[$name/$sc]}" "${M_CPU[nginx/$sc]:-0}")" "$(ratio "${M_CPU[$name/$sc]}" "${M_CPU[haproxy/$sc]:-0}")"
  done
done
if ((ROUNDS > 1)); then
  echo "CPU us/req per round:"
  for sc in "${SCENARIOS[@]}"; do
    for name in "${PROXIES[@]}"; do printf '  %-16s %-8s%s\n' "${LABEL[$sc]}" "$name" "${CPU[$name/$sc]}"; done
  done
fi
echo "negotiated (version, suite, key exchange, ALPN):"
for name in "${PROXIES[@]}"; do
  for sc in "${SCENARIOS[@]}"; do printf '  %-8s %-16s %s\n' "$name" "${LABEL[$sc]}" "${NEGOTIATED[$name/$sc]}"; done
done
echo "resumption probe (openssl s_client -sess_out, then -sess_in):"
for name in "${PROXIES[@]}"; do printf '  %-8s %s\n' "$name" "${PROBE[$name]}"; done
