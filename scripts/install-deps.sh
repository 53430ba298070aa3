#!/usr/bin/env bash
# Installs what canopy needs on Debian, skipping what is already there:
#   always:   cmake and a C toolchain (pingora's dependencies build C code), curl
#   --test:   the real programs the tests drive: Prometheus, Chromium, and
#             playwright-core (from tests/browser/package-lock.json)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake > /dev/null || need+=(cmake)
command -v cc > /dev/null || need+=(build-essential)
command -v curl > /dev/null || need+=(curl)
if [ "${1:-}" = --test ]; then
  command -v prometheus > /dev/null || need+=(prometheus)
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" > /dev/null
fi
if [ "${1:-}" = --test ]; then
  # The machine's Node 20 / npm; Debian's nodejs 18 is too old for playwright-core.
  npm ci --no-audit --no-fund --prefix tests/browser > /dev/null
fi
