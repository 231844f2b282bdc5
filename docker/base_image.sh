#!/usr/bin/env bash
# Make the local base image (Debian bookworm + python3.11 + venv) without an image registry:
# debootstrap a minimal rootfs from the Debian mirror and `docker import` it. Skipped if the image exists.
set -euo pipefail

IMAGE="${TSA_BASE_IMAGE:-local/debian:bookworm-py}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image: $IMAGE exists"
  exit 0
fi

rootfs="$(mktemp -d /var/tmp/tsa-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "base image: debootstrap bookworm into $rootfs (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# Package caches and lists are dead weight in the image (the image never runs apt-get).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
# An imported image has no config: give it the PATH a registry image would have.
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base image: imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
