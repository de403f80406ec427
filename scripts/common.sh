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
# Build the release library and install it into the server's directories (stop any server
# of yours that has the old one loaded first: the file is replaced in place).
install_release() {
    local sudo_flag=()
    if ! is_root && [ ! -w "$($PG_CONFIG --pkglibdir)" ]; then sudo_flag=(--sudo); fi
    cargo pgrx install --release -c "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null
    # Released install scripts (pgrx copies only upgrade scripts): CREATE EXTENSION ... VERSION
    # of an older release, and the upgrade test, start from them.
    local extdir
    extdir="$($PG_CONFIG --sharedir)/extension"
    for f in sql/pg_throttle--[0-9]*.[0-9]*.[0-9]*.sql; do
        case "$f" in *--*--*) continue ;; esac
        if [ -w "$extdir" ]; then cp "$f" "$extdir/"; else sudo cp "$f" "$extdir/"; fi
    done
}
# A directory for test clusters, owned by the server's user, exported for the Rust tests.
test_dir() {
    PG_THROTTLE_TEST_DIR=${PG_THROTTLE_TEST_DIR:-/var/tmp/pg_throttle_test}
    pg_owned_dir "$PG_THROTTLE_TEST_DIR"
    export PG_THROTTLE_TEST_DIR
}
