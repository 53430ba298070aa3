#!/usr/bin/env bash
# Builds a canopy image on a machine with no registry and no base image: the
# canopy binary, the shared libraries `ldd` lists (and the dynamic loader),
# the CA certificates and empty /etc/canopy, /var/lib/canopy and /tmp,
# imported as the image's whole root filesystem (`docker import`), as
# scripts/upstream-image.sh makes the test upstream's image.
#
#   cargo build --release && scripts/canopy-image.sh    # target/release/canopy as canopy:local
#   scripts/canopy-image.sh BINARY [IMAGE]              # another binary or image name
#
# The image runs `canopy serve -c /etc/canopy/proxy.toml` (ENTRYPOINT
# ["canopy"], so `docker exec <container> canopy status` works too); mount the
# config at /etc/canopy and keep the state in a volume at /var/lib/canopy.
# It has no shell: `command` checks need their program in the image or a
# volume. deploy/compose.yaml runs it; tests/canopy_image.rs starts it and
# proxies a request through it. Needs ldd, tar and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/canopy}"
image="${2:-canopy:local}"
if [ ! -x "$bin" ]; then
  echo "canopy-image: $bin is missing: run cargo build --release first (or give the binary)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/canopy" "$root/var/lib/canopy" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$bin" "$root/usr/local/bin/canopy"
# the binary's shared libraries and the dynamic loader, at their paths
for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# roots for ACME's HTTPS (Let's Encrypt), where the host has them
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
tar --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/canopy.tar" .
hash=$(sha256sum "$bin" | cut -c1-16)
docker import \
  --change 'ENTRYPOINT ["canopy"]' \
  --change 'CMD ["serve", "-c", "/etc/canopy/proxy.toml"]' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin RUST_LOG=info' \
  --change 'WORKDIR /var/lib/canopy' \
  --change 'EXPOSE 8080 9901' \
  --change "LABEL org.opencontainers.image.title=canopy canopy.binary.sha256=$hash" \
  "$work/canopy.tar" "$image" > /dev/null
echo "canopy-image: built $image from $bin ($(du -h "$work/canopy.tar" | cut -f1))"
