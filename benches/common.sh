# Shared helpers for the shell benchmarks (sourced by callgrind.sh,
# syscalls.sh, latency_ab.sh, load.sh and tls.sh). Loopback only.

# REL: where cargo put the release binaries (honours CARGO_TARGET_DIR)
REL=${CARGO_TARGET_DIR:-target}/release

# KIT: examples/testkit.rs, the test kit's ports and proxy configs (the
# same ones benches/*.rs use); each script builds it with its binaries
KIT=$REL/examples/testkit

# port: a free TCP port on 127.0.0.1, kept from the kernel's own choices for
# 60 s so that the proxy started on it gets it
port() { "$KIT" ports 1; }

# wait_port PORT: until something accepts on 127.0.0.1:PORT (30 s at most)
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# start_upstream: examples/upstream (release `juniper`, service storefront)
# on a free port, for the scripts that fronted it themselves; sets UP,
# appends its pid to PIDS and waits until it accepts.
start_upstream() {
  UP=$(port)
  $REL/examples/upstream juniper storefront=127.0.0.1:$UP >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$UP"
}

# drive PORT N: N keep-alive GET /products from one client, each must be 200
# (FRESH=1: a new connection for each)
drive() {
  python3 - "$1" "$2" <<'PY'
import http.client, os, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
fresh = os.environ.get("FRESH") == "1"  # a new connection per request
c = None
for i in range(n):
    if c is None or fresh:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/products", headers={"Connection": "close"} if fresh else {})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    if fresh:
        c.close()
PY
}

# canopy_cfg FILE PROXY_PORT ADMIN_PORT UPSTREAM [PROXY_LINES]: a canopy
# config with one release `juniper` whose storefront is UPSTREAM (host:port);
# PROXY_LINES (newline-separated, default `threads = 1`) go into [proxy].
# Prints FILE.
canopy_cfg() {
  "$KIT" canopy "$2" "$3" "$1.state.json" "$4" "${5:-threads = 1}" >"$1"
  echo "$1"
}

# canopy_tls_cfg FILE PROXY_PORT TLS_PORT ADMIN_PORT UPSTREAM [PROXY_LINES]:
# canopy_cfg plus a TLS listener on TLS_PORT with the certificate of
# make_cert ($CERT, $KEY). Prints FILE.
canopy_tls_cfg() {
  canopy_cfg "$1" "$2" "$4" "$5" "${6:-threads = 1}"$'\n'"listen-tls = \"127.0.0.1:$3\"" >/dev/null
  cat >>"$1" <<EOF
[tls]
[[tls.certificate]]
cert = "$CERT"
key = "$KEY"
EOF
  echo "$1"
}

# make_cert: one self-signed ECDSA P-256 certificate for localhost and
# 127.0.0.1 in $TMP; sets CERT and KEY (clients send SNI "localhost" and
# trust exactly this certificate) and writes $TMP/haproxy.pem (HAProxy wants
# both in one file).
make_cert() {
  CERT=$TMP/cert.pem KEY=$TMP/key.pem
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE -keyout "$KEY" -out "$CERT" 2>/dev/null
  cat "$CERT" "$KEY" >"$TMP/haproxy.pem"
}

# nginx_conf DIR PORT UPSTREAM WORKERS [SERVER_LINES]: nginx as a keep-alive
# reverse proxy to UPSTREAM (host:port), everything under DIR; SERVER_LINES
# (e.g. a TLS listener and its certificate) go into the server block.
# Prints the config path.
nginx_conf() {
  mkdir -p "$1"
  "$KIT" nginx "$1" "$2" "$3" "$4" "${5:-}" >"$1/nginx.conf"
  echo "$1/nginx.conf"
}

# haproxy_cfg FILE PORT UPSTREAM THREADS [BIND_LINES]: HAProxy in HTTP mode
# with THREADS threads, one frontend on 127.0.0.1:PORT and a keep-alive
# backend to UPSTREAM (host:port); BIND_LINES (e.g. a TLS `bind`) go into
# the frontend. Prints FILE.
haproxy_cfg() {
  "$KIT" haproxy "$2" "$3" "$4" "${5:-}" >"$1"
  echo "$1"
}

# ---------------------------------------------------------------- processes
# For scripts that keep the pids they start in the array PIDS, their files
# in $TMP and their proxies' logs in $TMP/NAME.log (load.sh, tls.sh).

die() { echo "${0##*/}: $*" >&2; exit 1; }

# stop_pid PID: TERM, then KILL (with its children) after 5s
stop_pid() {
  local pid=$1 i k
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    # still there: kill it and its children (nginx workers) for good
    for k in $(pgrep -P "$pid" || true); do kill -KILL "$k" 2>/dev/null || true; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# forget PID: drop a reaped pid from PIDS so the cleanup never signals a
# recycled pid that is no longer ours.
forget() {
  local keep=() p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

# exit_cleanup: the EXIT trap: stop every pid in PIDS, remove $TMP, keep the
# exit status.
exit_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
  exit "$rc"
}

# run CMD...: run a (bounded) command in the background and wait for it, so a
# signal to the script is handled at once instead of after CMD finishes, and
# CMD itself is stopped by the cleanup.
run() {
  "$@" &
  local pid=$! rc=0
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

# free_ports N: N distinct free loopback ports (see `port`).
free_ports() { "$KIT" ports "$1"; }

# wait_http NAME PID URL [CURL_ARGS...]: poll until URL answers 200, the
# process dies, or READY_TIMEOUT seconds (default 15) pass.
wait_http() {
  local name=$1 pid=$2 url=$3 deadline=$((SECONDS + ${READY_TIMEOUT:-15}))
  shift 3
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$TMP/$name.log" >&2 || true; die "$name exited during start-up"; }
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true) == 200 ]] && return 0
    sleep 0.05
  done
  tail -n 20 "$TMP/$name.log" >&2 || true
  die "$name did not answer 200 on $url within ${READY_TIMEOUT:-15}s"
}

# pick_proxies [NAME...]: the array PROXIES from $PROXIES (space-separated)
# when set, else canopy, the NAMEs given, and nginx and HAProxy where installed.
pick_proxies() {
  if [[ -n "${PROXIES:-}" ]]; then
    read -r -a PROXIES <<<"$PROXIES"
    return
  fi
  PROXIES=(canopy "$@")
  [[ -x /usr/sbin/nginx ]] && PROXIES+=(nginx) || echo "(nginx not installed: skipped)"
  [[ -x /usr/sbin/haproxy ]] && PROXIES+=(haproxy) || echo "(haproxy not installed: skipped)"
}

# ---------------------------------------------------------------- CPU time
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID [user]: CPU ticks (utime+stime, all threads; with `user`,
# utime only) of PID and its direct children (nginx workers).
cpu_ticks() {
  local total=0 p stat user_only=${2:-}
  for p in "$1" $(pgrep -P "$1" || true); do
    stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    stat=${stat##*) }            # drop "pid (comm) " - comm may contain spaces
    set -- $stat                  # $1 = state (field 3), so utime = $12, stime = $13
    if [[ -n $user_only ]]; then total=$((total + ${12})); else total=$((total + ${12} + ${13})); fi
  done
  echo "$total"
}

# busy_before: sets BUSY_BEFORE to how busy the CPUs were over one second
# (share of non-idle time), before anything of ours runs; warns above 20%.
busy_before() {
  local total0 idle0 total1 idle1
  read -r total0 idle0 <<<"$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)"
  sleep 1
  read -r total1 idle1 <<<"$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)"
  BUSY_BEFORE=$(awk -v t=$((total1 - total0)) -v i=$((idle1 - idle0)) 'BEGIN {printf "%.0f%%", (t > 0 ? 100 * (t - i) / t : 0)}')
  ((${BUSY_BEFORE%\%} < 20)) || echo "warning: the CPUs are already $BUSY_BEFORE busy; expect skewed numbers" >&2
}

# ---------------------------------------------------------------- report
# median "V1 V2 ..." PRINTF-FORMAT
median() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk -v f="$2" '{v[NR] = $1} END {if (NR) printf f, (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}

# ratio A B: A/B as "1.23x" ("-" without B)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
