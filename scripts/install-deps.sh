#!/usr/bin/env bash
# Installs what canopy needs on Debian, skipping what is already there:
#   always:   cmake and a C toolchain (pingora's dependencies build C code), curl
#   --test:   the real programs the tests drive, all from Debian's packages:
#             Prometheus (promtool too), Chromium and its WebDriver (chromedriver)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake > /dev/null || need+=(cmake)
command -v cc > /dev/null || need+=(build-essential)
command -v curl > /dev/null || need+=(curl)
if [ "${1:-}" = --test ]; then
  command -v prometheus > /dev/null || need+=(prometheus)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" > /dev/null
fi
