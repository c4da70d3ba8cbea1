#!/usr/bin/env bash
# Build the container image with podman and check it for real, through its published ports.
#
#   bash deploy/container-test.sh            (root, or a user podman works for)
#
# 1. Base: a Debian bookworm image with python3 and pip. Pulled when a registry answers;
#    otherwise made from Debian's packages with debootstrap (about a minute) and imported,
#    with this host's CA certificates (pip inside the build must trust what this host trusts).
#    Kept as localhost/phoenix-base:bookworm, so later runs on the machine reuse it.
# 2. Build: `podman build --format docker` (the OCI format drops HEALTHCHECK).
# 3. Run it (a small batch plan: seconds of warm-up) and check: health SERVING, a Rank call
#    whose logits are identical to this host's for the same request, /metrics, a non-root
#    uid, the HEALTHCHECK and VOLUME, and exit 0 within the grace period on SIGTERM; then a
#    second container on the same cache volume (a restart) warms up from it.
# Prints the figures (image size, cold and cached start-up, SIGTERM exit) as it goes.
#
# This host's podman quirks, handled here: crun fails on hybrid cgroups (--runtime runc), and
# root without CAP_SYS_RESOURCE cannot raise ulimits past the current hard limit (explicit
# --ulimit). Environment: PYTHON (default .venv/bin/python, with the project installed),
# IMAGE (default phoenix-ranker:test), KEEP=1 keeps the image and volume afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-phoenix-ranker:test}
BASE_IMAGE=localhost/phoenix-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUNTIME=(--runtime runc)
started=$(date +%s)
say() { echo "container-test: $*"; }

need() {  # install Debian packages whose commands are missing
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
need podman:podman runc:runc debootstrap:debootstrap

# -- 1. the base image -------------------------------------------------------------------------
if podman image exists "$BASE_IMAGE"; then
  say "base $BASE_IMAGE already here"
elif timeout 20 podman pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
  podman tag docker.io/library/python:3.11-slim-bookworm "$BASE_IMAGE"
  say "base pulled from docker.io"
else
  say "no registry answers: making the base with debootstrap from $MIRROR"
  root=$(mktemp -d /var/tmp/phoenix-base.XXXXXX)
  t0=$(date +%s)
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >/dev/null
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import -q --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  say "base made in $(( $(date +%s) - t0 ))s"
fi

# -- 2. the image -----------------------------------------------------------------------------
t0=$(date +%s)
podman build -q "${RUNTIME[@]}" --format docker --build-arg BASE="$BASE_IMAGE" -t "$IMAGE" . >/dev/null
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
say "image $IMAGE built in $(( $(date +%s) - t0 ))s, $(( size / 1000000 )) MB"

# -- 3. run and check (deploy/container_check.py) ----------------------------------------------
trap '[[ "${KEEP:-0}" == 1 ]] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true' EXIT
"$PYTHON" deploy/container_check.py --image "$IMAGE" --runtime runc
say "passed in $(( $(date +%s) - started ))s"
