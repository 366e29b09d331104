#!/usr/bin/env bash
# A throwaway Redis for the tests marked `redis` (`make test` runs this before them): the
# channel layer production uses, so that what one process sends another receives for real.
#
# Idempotent, and quick when it is already up. It:
#   1. returns at once if 127.0.0.1:$REDIS_PORT answers PING;
#   2. installs Debian's `redis-server` package when the binary is missing (root or sudo);
#   3. starts a server of its own on 127.0.0.1:$REDIS_PORT (never the system's 6379), in memory
#      only (no snapshots, no append-only file), daemonized, and waits until it answers;
#   4. prints the REDIS_URL it serves on stdout (progress goes to stderr).
set -euo pipefail

REDIS_PORT=63799
URL="redis://127.0.0.1:$REDIS_PORT/0"
RUN_DIR="${TMPDIR:-/tmp}/gateway-redis"

export DEBIAN_FRONTEND=noninteractive

log() { echo "redis.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

answering() {
    command -v redis-cli >/dev/null || return 1
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

if answering; then
    log "Redis already answering on 127.0.0.1:$REDIS_PORT"
    echo "$URL"
    exit 0
fi

if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "redis-server is not installed, and installing it needs root.
Run 'sudo apt-get install redis-server' once, then 'make test' again."
    fi
    log "installing Debian's redis-server package"
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server >&2
fi

mkdir -p "$RUN_DIR"
log "starting redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --save "" --appendonly no --dir "$RUN_DIR" \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log" >&2

for _ in $(seq 50); do
    if answering; then
        echo "$URL"
        exit 0
    fi
    sleep 0.1
done
die "redis-server did not answer on 127.0.0.1:$REDIS_PORT; see $RUN_DIR/redis.log"
