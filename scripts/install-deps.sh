#!/usr/bin/env bash
# Installs what canopy needs on Debian, skipping what is already there:
#   always:   cmake and a C toolchain (pingora's dependencies build C code), curl, openssl,
#             protoc (protobuf-compiler: the etcd client's gRPC code is generated at build time)
#   --test:   the real programs the tests drive, all from Debian's packages:
#             Prometheus (promtool too), Chromium and its WebDriver (chromedriver),
#             docker-registry (deploy pulls), docker-compose (compose file check),
#             systemd-analyze (unit check), pebble (the ACME test CA), h2load
#             (nghttp2-client, an HTTP/2 load client), and a Docker Engine where
#             none answers (docker.io, dockerd started in the background),
#             etcd and etcdctl (etcd-server, etcd-client: the fleet tests' etcd cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake > /dev/null || need+=(cmake)
command -v cc > /dev/null || need+=(build-essential)
command -v curl > /dev/null || need+=(curl)
command -v openssl > /dev/null || need+=(openssl) # scripts/demo.sh: a self-signed certificate
command -v protoc > /dev/null || need+=(protobuf-compiler)
if [ "${1:-}" = --test ]; then
  command -v prometheus > /dev/null || need+=(prometheus)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
  [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
  command -v docker-compose > /dev/null || need+=(docker-compose)
  command -v systemd-analyze > /dev/null || need+=(systemd)
  command -v pebble > /dev/null || need+=(pebble)
  command -v h2load > /dev/null || need+=(nghttp2-client)
  command -v etcd > /dev/null || need+=(etcd-server)
  command -v etcdctl > /dev/null || need+=(etcd-client)
  docker_up() { command -v docker > /dev/null && docker version --format '{{.Server.Version}}' > /dev/null 2>&1; }
  if ! docker_up && ! command -v dockerd > /dev/null; then need+=(docker.io); fi
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" > /dev/null
fi
if [ "${1:-}" = --test ] && ! docker_up; then
  echo "starting dockerd (log: /tmp/dockerd.log)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo sh -c 'nohup dockerd > /tmp/dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker_up && break; sleep 0.5; done
  docker_up || { echo "dockerd did not start; see /tmp/dockerd.log" >&2; exit 1; }
fi
