#!/usr/bin/env bash
# Builds canopy-test/upstream:{juniper,elm,oak,pine}: examples/upstream (the test
# upstream of tests/support/upstream.rs: echoes bodies, WebSockets, slow
# requests, /health) with the libraries `ldd` lists, imported as a rootfs.
# tests/deploy.rs runs it as the containers of the release switched under load.
#
#   ENTRYPOINT ["/upstream", TAG]  CMD ["server=0.0.0.0:8080"]  (a worker: command = ["worker=0.0.0.0:8080"])
#   ENV UPSTREAM_UNIX_RECEIVED=1: answers say when they arrived on the Unix clock
#
# Needs cargo and a Docker engine. Images built from the same binary (label
# canopy-test.hash) are kept. Output in ${CARGO_TARGET_DIR:-target}/upstream-image.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target/upstream-image"
mkdir -p "$out"
exec 9> "$out/lock"
flock 9

cargo build --quiet --example upstream
bin="$target/debug/examples/upstream"
repo=canopy-test/upstream
hash=$(cat "$bin" scripts/upstream-image.sh | sha256sum | cut -c1-16)
tags=(juniper elm oak pine)

current() {
  [ "$(docker image inspect -f '{{index .Config.Labels "canopy-test.hash"}}' "$repo:$1" 2> /dev/null)" = "$hash" ]
}
missing=()
for tag in "${tags[@]}"; do current "$tag" || missing+=("$tag"); done
[ ${#missing[@]} -eq 0 ] && exit 0

root="$out/rootfs"
rm -rf "$root" && mkdir -p "$root"
cp "$bin" "$root/upstream"
# the binary's shared libraries and the dynamic loader, at their paths
for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$out/upstream.tar" .

for tag in "${missing[@]}"; do
  old=$(docker image inspect -f '{{.Id}}' "$repo:$tag" 2> /dev/null || true)
  docker import \
    --change "ENTRYPOINT [\"/upstream\", \"$tag\"]" \
    --change 'CMD ["server=0.0.0.0:8080"]' \
    --change 'ENV UPSTREAM_UNIX_RECEIVED=1' \
    --change 'EXPOSE 8080' \
    --change "LABEL canopy-test.hash=$hash" \
    "$out/upstream.tar" "$repo:$tag" > /dev/null
  # the image this tag named before (an older build) is left untagged: remove it
  [ -z "$old" ] || docker rmi "$old" > /dev/null 2>&1 || true
  echo "upstream-image: built $repo:$tag"
done
