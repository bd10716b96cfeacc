#!/usr/bin/env bash
# Build the CPU image with no registry: a local Debian base from debootstrap, and Wacht
# installed from a wheelhouse built here (the way an air-gapped operator builds).
#
#   deploy/image/build.sh            # -> localhost/wacht:cpu
#
# Needs: podman, runc, debootstrap (apt-get install podman runc debootstrap), root, and pip
# access to the package index for the wheelhouse. Settings that work on the reference host
# (see ../shared/MACHINE-NOTES.md): --runtime runc, explicit nofile/nproc ulimits, host network.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
BUILD=${BUILD:-build/image}
BASE=${BASE:-localhost/wacht-base:bookworm}
IMAGE=${IMAGE:-localhost/wacht:cpu}
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
mkdir -p "$BUILD"

if ! "${PODMAN[@]}" image exists "$BASE"; then
  rm -rf "$BUILD/rootfs"
  # Debian 12's python3 is 3.11, what Wacht needs; nothing else goes into the base.
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$BUILD/rootfs" \
    http://deb.debian.org/debian
  rm -rf "$BUILD/rootfs/var/cache/apt/archives"/*.deb "$BUILD/rootfs/var/lib/apt/lists"/*
  tar -C "$BUILD/rootfs" -c . | "${PODMAN[@]}" import - "$BASE"
  rm -rf "$BUILD/rootfs"
fi

# Wheels for Wacht, its client distribution and every dependency (cpu extra).
rm -rf "$BUILD/wheelhouse"
"$PYTHON" -m pip wheel -q --wheel-dir "$BUILD/wheelhouse" ./clients/python '.[cpu]'

"${PODMAN[@]}" build "${LIMITS[@]}" --network host \
  --build-arg BASE_IMAGE="$BASE" --build-arg WHEELHOUSE="$BUILD/wheelhouse" \
  -f deploy/Dockerfile -t "$IMAGE" .
"${PODMAN[@]}" image ls "$IMAGE"
