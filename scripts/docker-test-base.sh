#!/usr/bin/env bash
# Make the Docker Engine usable for the build tests: install Debian's docker.io and debootstrap if missing,
# start dockerd if it is not answering, and make the local base image (no registry is reachable, so the base is
# built from a Debian bookworm root with python3 and venv, then `docker import`ed).
set -euo pipefail
image="${ENVLOCK_TEST_BASE:-envlock-test-base:bookworm}"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/tmp/envlock-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/envlock-dockerd.log" >&2; exit 1; }
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  root="$(mktemp -d)"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" >/tmp/envlock-debootstrap.log 2>&1 \
    || { echo "debootstrap failed; see /tmp/envlock-debootstrap.log" >&2; exit 1; }
  tar -C "$root" -c . | docker import - "$image" >/dev/null
  rm -rf "$root"
fi
echo "docker: engine $(docker version --format '{{.Server.Version}}'), base image $image"
