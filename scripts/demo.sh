#!/usr/bin/env bash
# canopy on the shipped proxy.toml, in front of two local "releases" of the
# Vendure stack (juniper and elm), each a set of small real HTTP servers.
# It registers both, shows traffic on juniper, validates and switches to elm,
# rolls back, and leaves canopy running until Ctrl-C.
#
#   proxy:  http://127.0.0.1:8080      admin/status page: http://127.0.0.1:9901
#
# scripts/demo.sh --docker: the deploy flow instead, with the test images
# (scripts/test-images.sh; needs a Docker engine, nothing is pulled):
# `canopy deploy juniper`, `canopy deploy elm`, a refused `canopy deploy crash`,
# a rollback, and the containers in `canopy status`. Its containers and
# network (demo-*) are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --bin canopy --example upstream
canopy=${CARGO_TARGET_DIR:-target}/release/canopy
upstream=${CARGO_TARGET_DIR:-target}/release/examples/upstream

if [ "${1:-}" = --docker ]; then
  scripts/test-images.sh
  work=$(mktemp -d)
  cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    ids=$(docker ps -aq --filter 'name=^/demo-(server|worker)--')
    [ -n "$ids" ] && docker rm -f $ids > /dev/null
    docker network rm demo-network > /dev/null 2>&1 || true
    rm -rf "$work"
  }
  trap cleanup EXIT INT TERM
  cat > "$work/proxy.toml" << 'TOML'
[proxy]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9901"
state-file = "state.json"
[releases]
address-template = "demo-{service}--{release}"
validation-window = "30s"
[docker]
network = "demo-network"
stop-timeout = "2s"
[[service]]
name = "server"
port = 8080
image = "canopy-test/server"
routes = ["/"]
checks = [{ kind = "http", path = "/health" }]
[service.container]
env = { CANOPY_SERVICE = "server" }
[[service]]
name = "worker"
port = 8080
image = "canopy-test/server"
overlap = false
checks = [{ kind = "http", path = "/health" }]
[service.container]
env = { CANOPY_SERVICE = "worker" }
TOML
  $canopy serve -c "$work/proxy.toml" 2> "$work/canopy.log" &
  export CANOPY_ADMIN=http://127.0.0.1:9901
  for _ in $(seq 100); do
    curl -fs "$CANOPY_ADMIN/healthz" > /dev/null && break
    sleep 0.1
  done
  curl -fs "$CANOPY_ADMIN/healthz" > /dev/null || { cat "$work/canopy.log"; exit 1; }
  step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || true; }
  step $canopy deploy juniper
  step curl -s http://127.0.0.1:8080/shop-api
  step $canopy deploy elm
  step curl -s http://127.0.0.1:8080/shop-api
  step $canopy deploy crash
  step $canopy rollback
  step $canopy status
  printf '\n\ncanopy is serving on http://127.0.0.1:8080 (admin: %s). Ctrl-C stops it and removes the demo containers.\n' "$CANOPY_ADMIN"
  printf 'Try: %s deploy oak; %s events; docker kill demo-server--oak; %s status\n' "$canopy" "$canopy" "$canopy"
  wait
  exit 0
fi

work=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The release containers vendure-{service}--{release} stand in as local ports.
$upstream juniper server=127.0.0.1:13000 worker=127.0.0.1:13020 storefront=127.0.0.1:14000 &
$upstream elm     server=127.0.0.1:23000 worker=127.0.0.1:23020 storefront=127.0.0.1:24000 &

# The shipped config, copied so its state file lands in a scratch directory,
# with HTTPS on 127.0.0.1:8443 turned on (a self-signed certificate for
# localhost; production uses real files or [tls.acme]).
cp proxy.toml "$work/proxy.toml"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/demo.key" -out "$work/demo.pem" 2> /dev/null
sed -i 's|^# listen-tls = "0.0.0.0:8443"|listen-tls = "0.0.0.0:8443"|' "$work/proxy.toml"
printf '\n[tls]\n[[tls.certificate]]\ncert = "demo.pem"\nkey = "demo.key"\n' >> "$work/proxy.toml"
mkdir -p "$work/deploy" && cp deploy/vendure.env "$work/deploy/" # its [service.container] env-file
# `initial = "juniper"` with juniper's local ports: live from the first start
printf '\n[[release]]\nname = "juniper"\nbackends = { server = ["127.0.0.1:13000"], worker = ["127.0.0.1:13020"], storefront = ["127.0.0.1:14000"] }\n' >> "$work/proxy.toml"
$canopy check-config -c "$work/proxy.toml"
# deploy/check-migrations asks the release's database; the demo has none.
CANOPY_DEMO_MIGRATIONS=ok $canopy serve -c "$work/proxy.toml" 2> "$work/canopy.log" &

export CANOPY_ADMIN=http://127.0.0.1:9901
for _ in $(seq 100); do
  curl -fs "$CANOPY_ADMIN/healthz" > /dev/null && break
  sleep 0.1
done
curl -fs "$CANOPY_ADMIN/healthz" > /dev/null || { cat "$work/canopy.log"; exit 1; }

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
served_by() { curl -s -o /dev/null -D - "http://127.0.0.1:8080$1" | tr -d '\r' | grep -i '^x-canopy-release'; }

step $canopy register juniper --backend server=127.0.0.1:13000 --backend worker=127.0.0.1:13020 --backend storefront=127.0.0.1:14000
step $canopy register elm --backend server=127.0.0.1:23000 --backend worker=127.0.0.1:23020 --backend storefront=127.0.0.1:24000
step served_by /shop-api
step served_by /products/42
step $canopy check elm
step $canopy switch elm
step served_by /products/42
step $canopy rollback
step served_by /products/42
step curl -s --http2 --cacert "$work/demo.pem" -o /dev/null -w '%{http_version} %{http_code} over TLS\n' https://localhost:8443/products/42
step $canopy tls
step $canopy status
printf '\ncanopy is serving on http://127.0.0.1:8080 and https://localhost:8443 (admin: %s). Ctrl-C stops everything.\n' "$CANOPY_ADMIN"
printf 'Try: curl -i http://127.0.0.1:8080/ -H "x-canopy-release: elm"   (preview)\n'
printf '     curl -i --http2 --cacert %s https://localhost:8443/\n' "$work/demo.pem"
printf '     %s switch elm; %s rollback; %s events\n' "$canopy" "$canopy" "$canopy"
wait
