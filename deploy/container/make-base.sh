#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 where no container registry answers
# (air-gapped build farms, CI without Docker Hub): debootstrap from the Debian mirror that
# apt already uses, then `podman import`. The result stands in for python:3.11-slim-bookworm:
#
#   deploy/container/make-base.sh                      # -> localhost/bookworm-python:3.11
#   podman build --format docker -f Dockerfile.cpu \
#     --build-arg PYTHON_IMAGE=localhost/bookworm-python:3.11 -t onnx-gateway:cpu .
#
# Environment: BASE_TAG (image name), MIRROR (Debian mirror), ROOTFS_CACHE (a directory
# kept between runs: the rootfs tarball is reused when it is there), PODMAN (the podman
# command, with any --root/--storage-driver flags the caller wants).
set -euo pipefail

BASE_TAG=${BASE_TAG:-localhost/bookworm-python:3.11}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS_CACHE=${ROOTFS_CACHE:-}
read -r -a PODMAN <<<"${PODMAN:-podman}"

[ "$(id -u)" -eq 0 ] || { echo "make-base.sh: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "make-base.sh: apt-get install debootstrap" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball="$work/rootfs.tar"
if [ -n "$ROOTFS_CACHE" ] && [ -s "$ROOTFS_CACHE/bookworm-python.tar" ]; then
  tarball="$ROOTFS_CACHE/bookworm-python.tar"
else
  rootfs="$work/rootfs"
  # minbase: dpkg, apt, coreutils, passwd (useradd); python3-venv gives the images their
  # venv module, python-is-python3 the `python` command the official images have.
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$MIRROR"
  # What a slim image leaves out: package lists, docs, man pages, locales, logs.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
    "$rootfs"/tmp/*
  # Same owner-independent, numeric tarball every run, so the import is reproducible.
  tar --numeric-owner --sort=name -C "$rootfs" -cf "$tarball" .
  if [ -n "$ROOTFS_CACHE" ]; then
    mkdir -p "$ROOTFS_CACHE"
    cp "$tarball" "$ROOTFS_CACHE/bookworm-python.tar.partial"
    mv "$ROOTFS_CACHE/bookworm-python.tar.partial" "$ROOTFS_CACHE/bookworm-python.tar"
  fi
fi

"${PODMAN[@]}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$BASE_TAG" >/dev/null
echo "$BASE_TAG"
