# Shared settings for the scripts. Sourced, not run.
export PATH="$HOME/.cargo/bin:$PATH"
PG_MAJOR=15
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}
export PG_CONFIG
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PGRX_VERSION=$(sed -n 's/^pgrx = "=\(.*\)"/\1/p' Cargo.toml)
# PostgreSQL refuses to run as root: as root, servers run as this user.
RUNAS=${PG_THROTTLE_RUNAS:-postgres}
is_root() { [ "$(id -u)" = 0 ]; }
# Run a PostgreSQL binary as the server's user.
as_pg() {
    if is_root; then runuser -u "$RUNAS" -- "$@"; else "$@"; fi
}
# A directory the server's user owns.
pg_owned_dir() {
    mkdir -p "$1"
    if is_root; then chown "$RUNAS:" "$1"; fi
}
