#!/usr/bin/env bash
# Start or stop a private Docker engine on a machine without one (see docker/README.md).
#   docker/engine.sh start   # no-op when `docker info` already answers
#   docker/engine.sh stop    # stops only the dockerd this script started (pidfile)
# TSA_DOCKER_ROOT (default /var/lib/tsa-docker) holds the engine's data, exec root, pidfile and log.
set -euo pipefail

ROOT="${TSA_DOCKER_ROOT:-/var/lib/tsa-docker}"
PIDFILE="$ROOT/dockerd.pid"
LOG="$ROOT/dockerd.log"
TIMEOUT="${TSA_DOCKER_TIMEOUT:-60}"

# Debian packages the engine and the rest of docker/ need; only the missing ones are installed.
ensure_packages() {
  local missing=() pkg
  for pkg in docker.io docker-compose debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "engine: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# PID from our pidfile, printed only if that process is still a dockerd (guards against PID reuse).
our_pid() {
  local pid
  [[ -s "$PIDFILE" ]] || return 1
  pid="$(<"$PIDFILE")"
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  echo "$pid"
}

start() {
  if docker info >/dev/null 2>&1; then
    echo "engine: already running"
    return 0
  fi
  ensure_packages
  if our_pid >/dev/null; then
    echo "engine: dockerd $(our_pid) from $PIDFILE does not answer; see $LOG" >&2
    exit 1
  fi
  mkdir -p "$ROOT/data" "$ROOT/exec"
  # setsid: the engine outlives this shell and is not hit by its terminal's signals.
  # The socket stays at the default /var/run/docker.sock so a plain `docker` client finds it.
  setsid dockerd --storage-driver=overlay2 --data-root "$ROOT/data" --exec-root "$ROOT/exec" \
    --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
  local waited=0
  until docker info >/dev/null 2>&1; do
    if ((waited >= TIMEOUT)) || ! kill -0 $! 2>/dev/null; then
      echo "engine: dockerd did not come up within ${waited}s; last lines of $LOG:" >&2
      tail -n 30 "$LOG" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "engine: dockerd $(our_pid) up after ${waited}s (pidfile $PIDFILE, log $LOG, data $ROOT/data)"
}

stop() {
  local pid waited=0
  if ! pid="$(our_pid)"; then
    echo "engine: no dockerd started by this script (no live pid in $PIDFILE); nothing to stop"
    return 0
  fi
  kill -TERM "$pid"
  # dockerd stops its containers and containerd first; that takes a few seconds.
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= TIMEOUT)); then
      echo "engine: dockerd $pid still running after ${waited}s; see $LOG" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "engine: dockerd $pid stopped after ${waited}s"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
