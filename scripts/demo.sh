#!/usr/bin/env bash
# The main job, from a fresh machine: install what is missing, build and install pg_throttle,
# start a local PostgreSQL with it preloaded, configure real provider limits and show them
# throttling. The server is left running to explore; `scripts/demo.sh stop` stops it.
#
#   scripts/demo.sh          set up, (re)start the demo server, run the demo
#   scripts/demo.sh stop     stop the demo server (by its data directory)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

dir=${PG_THROTTLE_DEMO_DIR:-/var/tmp/pg_throttle_demo}
port=${PG_THROTTLE_DEMO_PORT:-5499}
data="$dir/data"
psql_cmd=("$PG_BIN/psql" -X -q -h "$dir" -p "$port" -U postgres -d postgres)

stop_server() {
    # Only a server that runs (a machine that went down leaves a stale postmaster.pid).
    if [ -f "$data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop
    fi
}

if [ "${1:-}" = stop ]; then
    stop_server
    exit 0
fi

scripts/setup.sh
echo "==> building and installing pg_throttle (release)"
# A running demo server maps the old library: stop it before the file is replaced.
stop_server
install_release

if [ ! -f "$data/PG_VERSION" ]; then
    echo "==> creating a cluster in $data"
    pg_owned_dir "$dir"
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
    cat >>"$data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_throttle'
throttle.max_buckets = 100000
EOF
fi
echo "==> starting PostgreSQL on port $port"
as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w start >/dev/null

"${psql_cmd[@]}" -v ON_ERROR_STOP=1 -f scripts/demo.sql

echo
echo "==> chart: what each limit counted over its period, against what it allows"
"${psql_cmd[@]}" --csv -c 'SELECT second, series, released, "limit" FROM public.demo_release ORDER BY series, second' \
    | python3 scripts/chart.py -o "$dir/release.svg" \
        --title "pg_throttle demo: every limit at or under its line"
echo "    $dir/release.svg (open it in a browser)"

cat <<EOF

The server is still running. Explore it:
    psql "host=$dir port=$port user=postgres dbname=postgres"
    (or: psql -h 127.0.0.1 -p $port -U postgres)
Stop it:
    scripts/demo.sh stop
EOF
