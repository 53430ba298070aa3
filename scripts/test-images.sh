#!/usr/bin/env bash
# Builds the Docker images canopy's Docker tests run, with no registry and no
# base image: docker/testbin/server.rs compiled into one static binary, which
# is the whole rootfs of each image (`docker import` of a tar holding /server).
#
#   canopy-test/server:juniper, :elm, :oak   serve HTTP on 8080, answer {"release": TAG, ...},
#                                            HEALTHCHECK every second (server --probe)
#   canopy-test/server:crash                 exits with code 3 at start
#   canopy-test/server:sick                  never healthy (/health answers 503)
#   canopy-test/server:bare                  no HEALTHCHECK
#   canopy-test/server:pull                  like :oak but on its own layer, for the pull test
#                                            (which pushes it to a local registry, then deletes it)
#
# Needs rustc, tar, flock and a Docker engine. Images already built from the
# same sources (label canopy-test.hash) are kept, so a second run is instant.
# The binary and tarballs go to ${CARGO_TARGET_DIR:-target}/test-images.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-$PWD/target}/test-images"
mkdir -p "$out"
exec 9> "$out/lock"
flock 9 # one build at a time: test processes may call this concurrently

repo=canopy-test/server
hash=$(cat docker/testbin/server.rs scripts/test-images.sh | sha256sum | cut -c1-16)
tags=(juniper elm oak crash sick bare pull)

current() { # an image of this tag built from these sources exists
  [ "$(docker image inspect -f '{{index .Config.Labels "canopy-test.hash"}}' "$repo:$1" 2> /dev/null)" = "$hash" ]
}

missing=()
for tag in "${tags[@]}"; do current "$tag" || missing+=("$tag"); done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(cat "$out/server.hash" 2> /dev/null)" != "$hash" ]; then
  rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
    -o "$out/server" docker/testbin/server.rs
  if ! ldd "$out/server" 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then
    echo "test-images: $out/server is not static:" >&2
    ldd "$out/server" >&2
    exit 1
  fi
  root="$out/rootfs"
  rm -rf "$root" && mkdir -p "$root"
  cp "$out/server" "$root/server"
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$out/server.tar" server
  echo "$hash" > "$out/server.hash"
fi

for tag in "${missing[@]}"; do
  changes=(
    --change 'ENTRYPOINT ["/server"]'
    --change "ENV CANOPY_RELEASE=$tag PORT=8080"
    --change 'EXPOSE 8080'
    --change "LABEL canopy-test.hash=$hash"
  )
  case $tag in
    crash) changes+=(--change 'ENV SERVER_CRASH=3') ;;
    sick) changes+=(--change 'ENV SERVER_UNHEALTHY=1') ;;
  esac
  if [ "$tag" != bare ]; then
    changes+=(--change 'HEALTHCHECK --interval=1s --timeout=2s CMD ["/server", "--probe"]')
  fi
  tarball="$out/server.tar"
  if [ "$tag" = pull ]; then
    # a file of its own, different at every import: the pull test deletes the
    # image and must really download its layer, which an older import of the
    # same bytes (left dangling) would otherwise still hold
    mkdir -p "$out/rootfs" && cp "$out/server" "$out/rootfs/server"
    echo "pull $(date +%s%N) $$" > "$out/rootfs/layer"
    tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$out/rootfs" -cf "$out/pull.tar" server layer
    tarball="$out/pull.tar"
  fi
  old=$(docker image inspect -f '{{.Id}}' "$repo:$tag" 2> /dev/null || true)
  docker import "${changes[@]}" "$tarball" "$repo:$tag" > /dev/null
  # the image this tag named before is left untagged: remove it (unless a container still uses it)
  [ -z "$old" ] || docker rmi "$old" > /dev/null 2>&1 || true
  echo "test-images: built $repo:$tag"
done
