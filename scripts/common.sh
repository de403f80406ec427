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
# Put file $1 at $2 without writing into the old file: copy it beside its destination, then
# rename it over (a server that has the old library mapped keeps the old file; writing into it
# in place crashes that server).
place() {
    local tmp
    tmp="$(dirname "$2")/.$(basename "$2").new.$$"
    if [ -w "$(dirname "$2")" ]; then
        cp "$1" "$tmp" && mv -f "$tmp" "$2"
    else
        sudo cp "$1" "$tmp" && sudo mv -f "$tmp" "$2"
    fi
}
# Build the release library and its SQL into a staging tree (cargo pgrx package), then place
# every file into the server's directories by rename: safe while servers of yours run (they
# keep the library they loaded until they restart).
install_release() {
    local out=target/pkg libdir extdir f
    rm -rf "$out"
    cargo pgrx package -c "$PG_CONFIG" --out-dir "$out" >/dev/null
    libdir=$($PG_CONFIG --pkglibdir)
    extdir="$($PG_CONFIG --sharedir)/extension"
    place "$out$libdir/pg_throttle.so" "$libdir/pg_throttle.so"
    for f in "$out$extdir"/*; do
        place "$f" "$extdir/$(basename "$f")"
    done
    # Released install scripts (pgrx packages only upgrade scripts): CREATE EXTENSION ...
    # VERSION of an older release, and the upgrade test, start from them.
    for f in sql/pg_throttle--[0-9]*.[0-9]*.[0-9]*.sql; do
        case "$f" in *--*--*) continue ;; esac
        place "$f" "$extdir/$(basename "$f")"
    done
}
# Give the installed library a new file of its own (a copy renamed over it), so that the
# next install writes into that new file rather than into the one a running server has
# mapped (cargo pgrx test copies its build over the installed library in place; a server
# whose mapped file is written into crashes). The path never goes missing, and running
# servers keep the file they loaded: PostgreSQL finds a loaded library again by its path.
renew_installed_library() {
    local lib
    lib="$($PG_CONFIG --pkglibdir)/pg_throttle.so"
    [ -e "$lib" ] || return 0
    place "$lib" "$lib"
}
# A directory for test clusters, owned by the server's user, exported for the Rust tests.
test_dir() {
    PG_THROTTLE_TEST_DIR=${PG_THROTTLE_TEST_DIR:-/var/tmp/pg_throttle_test}
    pg_owned_dir "$PG_THROTTLE_TEST_DIR"
    export PG_THROTTLE_TEST_DIR
}
