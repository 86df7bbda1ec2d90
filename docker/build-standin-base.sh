#!/bin/bash
# Build a local stand-in for python:3.11-slim-bookworm from Debian packages, for machines that
# cannot pull official images (as used by `make docker-test`): debootstrap a minimal bookworm
# with python3, python3-venv and ca-certificates, and import it as IMAGE (podman, vfs storage).
# Does nothing when IMAGE exists. Usage: docker/build-standin-base.sh [IMAGE]
set -euo pipefail
image=${1:-localhost/pix2pix-standin-python:3.11-slim-bookworm}
podman=(podman --storage-driver vfs)

if "${podman[@]}" image exists "$image"; then
    echo "stand-in base $image exists"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install $tool" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/pix2pix-standin.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm into $work (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | "${podman[@]}" import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image" >/dev/null
echo "stand-in base $image: $("${podman[@]}" image inspect --format '{{.Size}}' "$image") bytes"
