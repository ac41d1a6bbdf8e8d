# shellcheck shell=bash
# Start a throwaway PostgreSQL server for the store tests. Sourced by .ci/run:
#
#   source .ci/postgres.sh      # exports WATTSCALE_TEST_POSTGRES_URL
#   trap wattscale_pg_stop EXIT # stops the server and deletes its files
#
# Installs PostgreSQL with apt-get when no initdb is found (needs root). The cluster lives in a
# temporary directory, listens on 127.0.0.1 only (port 55432, or the next free one) with trust
# authentication, runs without fsync, and is owned by the OS user `postgres` when we are root
# (initdb refuses to run as root). It holds the database `wattscale_test`, owned by the
# non-superuser role `wattscale` (LOGIN CREATEDB), so the tests run with the privileges a
# real deployment would give wattscale.
# If WATTSCALE_TEST_POSTGRES_URL is already set, that server is used and nothing is started.
# Works under `set -euo pipefail` and without it (every step checks its own result).

wattscale_pg_log() {
    echo "postgres.sh: $*" >&2
}

wattscale_pg_bindir() {
    # Newest installed major version first; WATTSCALE_PG_BINDIR overrides.
    if [[ -n "${WATTSCALE_PG_BINDIR:-}" ]]; then
        echo "$WATTSCALE_PG_BINDIR"
        return 0
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

wattscale_pg_install() {
    if [[ "$(id -u)" != 0 ]]; then
        wattscale_pg_log "no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin and not root;" \
            "install the 'postgresql' package or set WATTSCALE_PG_BINDIR"
        return 1
    fi
    wattscale_pg_log "installing PostgreSQL with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2 || return 1
}

# Run a command as the cluster's owner: `postgres` when we are root, else ourselves.
wattscale_pg_as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

wattscale_pg_free_port() {
    local port
    for port in $(seq "${1:-55432}" "$((${1:-55432} + 50))"); do
        # A refused connection means nobody listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

wattscale_pg_start() {
    if [[ -n "${WATTSCALE_TEST_POSTGRES_URL:-}" ]]; then
        wattscale_pg_log "using the server in WATTSCALE_TEST_POSTGRES_URL; not starting one"
        return 0
    fi
    local bindir
    if ! bindir="$(wattscale_pg_bindir)"; then
        wattscale_pg_install || { wattscale_pg_log "could not install PostgreSQL"; return 1; }
        bindir="$(wattscale_pg_bindir)" || { wattscale_pg_log "no initdb after installing PostgreSQL"; return 1; }
    fi
    local port
    port="$(wattscale_pg_free_port "${WATTSCALE_PG_PORT:-55432}")" || {
        wattscale_pg_log "no free port near ${WATTSCALE_PG_PORT:-55432}"
        return 1
    }
    WATTSCALE_PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/wattscale-pg.XXXXXX")" || return 1
    WATTSCALE_PG_BIN="$bindir"
    export WATTSCALE_PG_DIR WATTSCALE_PG_BIN
    if [[ "$(id -u)" == 0 ]]; then
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres || return 1
        chown postgres: "$WATTSCALE_PG_DIR" || return 1
    fi
    wattscale_pg_log "initdb ($bindir) in $WATTSCALE_PG_DIR"
    wattscale_pg_as_owner "$bindir/initdb" -D "$WATTSCALE_PG_DIR/data" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale --no-sync >"$WATTSCALE_PG_DIR/initdb.log" 2>&1 || {
        cat "$WATTSCALE_PG_DIR/initdb.log" >&2
        wattscale_pg_log "initdb failed"
        wattscale_pg_stop
        return 1
    }
    # -F: no fsync (a throwaway cluster); -k: the unix socket stays inside our directory.
    wattscale_pg_as_owner "$bindir/pg_ctl" -D "$WATTSCALE_PG_DIR/data" -l "$WATTSCALE_PG_DIR/server.log" \
        -w -t 60 -o "-h 127.0.0.1 -p $port -k $WATTSCALE_PG_DIR -F" start >/dev/null || {
        cat "$WATTSCALE_PG_DIR/server.log" >&2 2>/dev/null
        wattscale_pg_log "pg_ctl start failed"
        wattscale_pg_stop
        return 1
    }
    local tries=0
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; do
        tries=$((tries + 1))
        if ((tries > 60)); then
            wattscale_pg_log "server on port $port not ready after 30 s"
            wattscale_pg_stop
            return 1
        fi
        sleep 0.5
    done
    "$bindir/psql" -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "CREATE ROLE wattscale LOGIN CREATEDB" \
        -c "CREATE DATABASE wattscale_test OWNER wattscale" >&2 || {
        wattscale_pg_log "could not create role/database"
        wattscale_pg_stop
        return 1
    }
    WATTSCALE_PG_PORT="$port"
    WATTSCALE_TEST_POSTGRES_URL="postgresql+psycopg://wattscale@127.0.0.1:$port/wattscale_test"
    export WATTSCALE_PG_PORT WATTSCALE_TEST_POSTGRES_URL
    wattscale_pg_log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') ready:" \
        "$WATTSCALE_TEST_POSTGRES_URL"
}

# Stop the server and delete its directory. Safe to call twice, from a trap, and when nothing
# was started; never fails.
wattscale_pg_stop() {
    local dir="${WATTSCALE_PG_DIR:-}"
    if [[ -n "$dir" && -d "$dir" ]]; then
        if [[ -f "$dir/data/postmaster.pid" ]]; then
            wattscale_pg_as_owner "${WATTSCALE_PG_BIN:?}/pg_ctl" -D "$dir/data" -m immediate -w stop \
                >/dev/null 2>&1 || true
        fi
        rm -rf -- "$dir" || true
        unset WATTSCALE_TEST_POSTGRES_URL
    fi
    unset WATTSCALE_PG_DIR
    return 0
}

wattscale_pg_start
