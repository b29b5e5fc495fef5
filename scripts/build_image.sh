#!/usr/bin/env bash
# Build the server image: scripts/build_image.sh [cpu|cuda] [TAG]     (make image IMAGE_TARGET=... IMAGE_TAG=...)
#
# Uses podman or docker, whichever exists (podman first). The base image is $BASE_IMAGE when set, else
# python:3.11-slim when it can be pulled, else a Debian bookworm base made here with mmdebstrap
# (--variant=minbase --include=python3,python3-venv) and imported as localhost/hamlet-base:bookworm: the recipe
# for machines that reach Debian's and PyPI's mirrors but no container registry.
#
# With podman this also copes with a sandboxed build host: the runc runtime (crun fails on cgroups there),
# ulimits below the host's hard limits, the host network, and the host's pip configuration, CA bundle and
# local wheel folders mounted into the build so pip inside it installs what pip outside would.
# Prints the image's size and the build time.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${1:-cpu}"
TAG="${2:-hamlet-serve:$TARGET}"
case "$TARGET" in cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda] [TAG]  (got target '$TARGET')" >&2; exit 2;; esac

if command -v podman >/dev/null; then ENGINE=podman
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
else echo "$0: neither podman nor a running docker; install one (Debian: apt-get install podman runc mmdebstrap)" >&2; exit 2
fi

ENGINE_ARGS=()
BUILD_ARGS=()
if [ "$ENGINE" = podman ]; then
  ENGINE_ARGS=(--runtime runc)
  BUILD_ARGS+=(--format docker --network host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)  # docker format: keeps HEALTHCHECK
  # pip's configuration and what it points at, read-only, when the host has them
  for path in /etc/pip.conf /etc/xdg/pip /etc/ssl/certs /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -e "$path" ] && BUILD_ARGS+=(--volume "$path:$path:ro")
  done
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT PIP_DEFAULT_TIMEOUT; do
    [ -n "${!var:-}" ] && BUILD_ARGS+=(--env "$var=${!var}")
  done
fi

base_image() {
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; return; fi
  if "$ENGINE" "${ENGINE_ARGS[@]}" image exists python:3.11-slim 2>/dev/null \
     || timeout 60 "$ENGINE" "${ENGINE_ARGS[@]}" pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    echo python:3.11-slim; return
  fi
  local local_base=localhost/hamlet-base:bookworm
  if ! "$ENGINE" "${ENGINE_ARGS[@]}" image exists "$local_base" 2>/dev/null; then
    command -v mmdebstrap >/dev/null || { echo "$0: no registry reachable and no mmdebstrap to make a base (apt-get install mmdebstrap)" >&2; exit 2; }
    echo "== no registry base reachable: making $local_base with mmdebstrap (about a minute)" >&2
    local tar; tar="$(mktemp -d)/base.tar"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar" >&2
    "$ENGINE" "${ENGINE_ARGS[@]}" import "$tar" "$local_base" >/dev/null
    rm -rf "$(dirname "$tar")"
  fi
  echo "$local_base"
}

BASE="$(base_image)"
if [ -n "${CPU_PIP_EXTRA_INDEX_URL+x}" ]; then
  BUILD_ARGS+=(--build-arg "CPU_PIP_EXTRA_INDEX_URL=$CPU_PIP_EXTRA_INDEX_URL")
elif ! timeout 10 python3 -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=8)" 2>/dev/null; then
  echo "== download.pytorch.org is not reachable: torch's CPU build must come from pip's own configuration" >&2
  BUILD_ARGS+=(--build-arg "CPU_PIP_EXTRA_INDEX_URL=")
fi
echo "== building $TAG (target $TARGET, base $BASE) with $ENGINE"
started=$(date +%s)
"$ENGINE" "${ENGINE_ARGS[@]}" build "${BUILD_ARGS[@]}" --build-arg "BASE_IMAGE=$BASE" \
  --target "$TARGET" -f deploy/Dockerfile -t "$TAG" .
elapsed=$(( $(date +%s) - started ))
size=$("$ENGINE" "${ENGINE_ARGS[@]}" image inspect --format '{{.Size}}' "$TAG")
echo "== built $TAG: $(( size / 1000000 )) MB in ${elapsed} s (base $BASE)"
