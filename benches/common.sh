# Shared helpers for the shell benchmarks (sourced by callgrind.sh,
# syscalls.sh, latency_ab.sh and load.sh). Loopback only.

# REL: where cargo put the release binaries (honours CARGO_TARGET_DIR)
REL=${CARGO_TARGET_DIR:-target}/release

# port: a free TCP port on 127.0.0.1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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

# canopy_cfg FILE PROXY_PORT ADMIN_PORT UPSTREAM [PROXY_LINES]: a canopy
# config with one release `juniper` whose storefront is UPSTREAM (host:port);
# PROXY_LINES (newline-separated, default `threads = 1`) go into [proxy].
# Prints FILE.
canopy_cfg() {
  cat > "$1" <<CFG
[proxy]
listen = "127.0.0.1:$2"
${5:-threads = 1}
[admin]
listen = "127.0.0.1:$3"
state-file = "$1.state.json"
[releases]
address-template = "bench-{service}--{release}.invalid"
initial = "juniper"
[[release]]
name = "juniper"
backends = { storefront = ["$4"] }
[[service]]
name = "storefront"
port = 4000
routes = ["/"]
CFG
  echo "$1"
}

# nginx_conf DIR PORT UPSTREAM WORKERS: nginx as a keep-alive reverse proxy
# to UPSTREAM (host:port), everything under DIR. Prints the config path.
nginx_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CFG
daemon off;
worker_processes $4;
error_log $1/error.log warn;
pid $1/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  upstream u { server $3; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CFG
  echo "$1/nginx.conf"
}
