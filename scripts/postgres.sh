#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests marked `postgres` (`make test` runs this before them).
#
# Idempotent, and quick when everything is already up. It:
#   1. returns at once if 127.0.0.1:$PG_PORT already serves the gateway role and database;
#   2. installs Debian's `postgresql` package when the server binaries are missing;
#   3. creates a dedicated Debian cluster "$PG_CLUSTER" on 127.0.0.1:$PG_PORT (never the
#      system's 5432), or repairs or recreates a stale one left by an earlier run;
#   4. starts it and waits until it accepts connections;
#   5. ensures the role gateway/gateway (CREATEDB: Django creates test_gateway) and the database;
#   6. prints the DATABASE_URL it serves on stdout (progress goes to stderr).
#
# Steps 2-5 need root (or passwordless sudo). The cluster is for tests only: fsync is off.
set -euo pipefail

PG_PORT=54329
PG_CLUSTER=gateway
PG_USER=gateway
PG_PASSWORD=gateway
PG_DB=gateway
URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"

export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 LANG=C.UTF-8
unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS PGSSLMODE PGCLUSTER

log() { echo "postgres.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Does 127.0.0.1:$PG_PORT let the gateway role into its database, with CREATEDB?
serving() {
    command -v pg_isready >/dev/null && command -v psql >/dev/null || return 1
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 || return 1
    [ "$(PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -A -t -q -h 127.0.0.1 \
        -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
        -c 'SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user' 2>/dev/null)" = t ]
}

# 1. Fast path: already up (from an earlier run, or a server the developer runs themselves).
if serving; then
    log "PostgreSQL already serving on 127.0.0.1:$PG_PORT"
    echo "$URL"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        log "not root: re-running with sudo"
        exec sudo -n bash "$0" "$@"
    fi
    die "nothing serves 127.0.0.1:$PG_PORT, and installing/starting PostgreSQL needs root.
Run 'sudo bash scripts/postgres.sh' once (it installs the Debian 'postgresql' package if
needed and starts the cluster '$PG_CLUSTER' on port $PG_PORT), then run 'make test' again."
fi

newest_version() {
    local bin
    for bin in /usr/lib/postgresql/*/bin/postgres; do
        [ -x "$bin" ] && basename "$(dirname "$(dirname "$bin")")"
    done | sort -n | tail -n 1
}

# 2. The Debian packages: server binaries plus postgresql-common's cluster tools.
if ! command -v pg_createcluster >/dev/null || ! command -v pg_ctlcluster >/dev/null \
    || [ -z "$(newest_version)" ]; then
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get:
install PostgreSQL yourself, or serve $URL (role with CREATEDB) some other way."
    log "installing PostgreSQL from Debian packages (apt-get)"
    start=$SECONDS
    apt_opts=(-q -o DPkg::Lock::Timeout=300)
    apt-get "${apt_opts[@]}" update >&2 || die "apt-get update failed"
    apt-get "${apt_opts[@]}" install -y --no-install-recommends postgresql >&2 \
        || die "apt-get install postgresql failed"
    log "installed in $((SECONDS - start)) s"
fi

# 3. The cluster: reuse ours when its binaries and data are intact, otherwise (re)create it.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

cluster_line() { pg_lsclusters --no-header 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c' | head -n 1; }

version=""
line="$(cluster_line)"
if [ -n "$line" ]; then
    read -r version _ _ _ _ datadir _ <<<"$line"
    if [ ! -x "/usr/lib/postgresql/$version/bin/postgres" ] || [ ! -f "$datadir/PG_VERSION" ]; then
        log "dropping stale cluster $version/$PG_CLUSTER (binaries or data missing)"
        pg_dropcluster --stop "$version" "$PG_CLUSTER" 2>/dev/null || true
        rm -rf "/etc/postgresql/$version/$PG_CLUSTER" "$datadir"
        version=""
    fi
fi
if [ -z "$version" ]; then
    version="$(newest_version)"
    datadir="/var/lib/postgresql/$version/$PG_CLUSTER"
    # Leftovers of a half-created cluster would make pg_createcluster refuse or adopt them.
    rm -rf "/etc/postgresql/$version/$PG_CLUSTER" "$datadir"
    log "creating cluster $version/$PG_CLUSTER on port $PG_PORT"
    pg_createcluster --quiet --port "$PG_PORT" --locale C.UTF-8 --start-conf manual \
        "$version" "$PG_CLUSTER" >&2
fi

# Settings, enforced on every slow run: a cluster from an older version of this script, or one
# someone edited, gets them back. Test-only durability: nothing here must survive a crash.
conf="/etc/postgresql/$version/$PG_CLUSTER"
changed=""
if [ "$(pg_conftool -s "$version" "$PG_CLUSTER" show port 2>/dev/null)" != "$PG_PORT" ]; then
    pg_conftool "$version" "$PG_CLUSTER" set port "$PG_PORT"
    changed=1
fi
desired="# Written by scripts/postgres.sh: a local test cluster, not for data you want to keep.
listen_addresses = '127.0.0.1'
ssl = off
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100"
mkdir -p "$conf/conf.d"
if [ "$(cat "$conf/conf.d/gateway-test.conf" 2>/dev/null)" != "$desired" ]; then
    echo "$desired" > "$conf/conf.d/gateway-test.conf"
    changed=1
fi
if [ -n "$changed" ] && pg_ctlcluster "$version" "$PG_CLUSTER" status >/dev/null 2>&1; then
    log "settings changed: stopping cluster $version/$PG_CLUSTER to restart it"
    pg_ctlcluster "$version" "$PG_CLUSTER" stop -m fast >&2
fi

# A server killed without a shutdown (SIGKILL, a container torn down) leaves postmaster.pid and
# the socket lock behind. Postgres ignores them unless their PID now belongs to another live
# process, which after a reboot or in a fresh container it easily does: remove them unless
# the PID is really a postmaster in this data directory.
real_datadir="$(readlink -f "$datadir")"
is_our_postmaster() {
    local pid="$1"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] \
        && [ "$(readlink -f "/proc/$pid/cwd" 2>/dev/null)" = "$real_datadir" ]
}
for lock in "$datadir/postmaster.pid" "/var/run/postgresql/.s.PGSQL.$PG_PORT.lock"; do
    if [ -f "$lock" ] && ! is_our_postmaster "$(head -n 1 "$lock")"; then
        log "removing stale $lock"
        rm -f "$lock"
        if [ "${lock%.lock}" != "$lock" ]; then rm -f "${lock%.lock}"; fi
    fi
done

# 4. Start it (unless it runs) and wait until it accepts TCP connections.
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
if ! pg_ctlcluster "$version" "$PG_CLUSTER" status >/dev/null 2>&1; then
    log "starting cluster $version/$PG_CLUSTER"
    start=$SECONDS
    if ! pg_ctlcluster "$version" "$PG_CLUSTER" start >&2; then
        tail -n 20 "/var/log/postgresql/postgresql-$version-$PG_CLUSTER.log" >&2 2>/dev/null || true
        die "could not start cluster $version/$PG_CLUSTER (is port $PG_PORT taken by another server?)"
    fi
    log "started in $((SECONDS - start)) s"
fi
for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 1 && break
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 1 \
    || die "cluster $version/$PG_CLUSTER does not accept connections on 127.0.0.1:$PG_PORT"

# 5. Role and database (as the postgres superuser, over the cluster's Unix socket).
as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres >&2 <<SQL
SELECT format('CREATE ROLE %I', '$PG_USER')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') \gexec
ALTER ROLE "$PG_USER" WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_DB', '$PG_USER')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL

# 6. Check from the outside, the way the tests connect, and hand out the URL.
serving || die "cluster $version/$PG_CLUSTER is up but $URL does not work (see pg_hba.conf)"
log "PostgreSQL $version serving on 127.0.0.1:$PG_PORT (cluster $version/$PG_CLUSTER)"
echo "$URL"
