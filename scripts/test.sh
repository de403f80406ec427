#!/usr/bin/env bash
# Runs every test: the pure core's unit and property tests (its own crate, no PostgreSQL
# needed), the #[pg_test]s (cargo pgrx test), then the client-side tests against real servers
# (tests/). Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/common.sh

test_dir
work=$PG_THROTTLE_TEST_DIR

echo "==> the pure core: unit, property and simulation tests"
cargo test -p pg_throttle_core

echo "==> clippy: every unsafe block says why it is sound"
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy -q -p pg_throttle --lib
else
    echo "clippy is not installed (rustup component add clippy): the SAFETY-note lint was not run" >&2
fi

echo "==> #[pg_test] tests"
runas=()
if is_root; then runas=(--runas "$RUNAS"); fi
# A run that was cut short may have left its server behind: stop it by its data directory.
if [ -f "$work/pgrx-data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$work/pgrx-data" -m immediate stop >/dev/null 2>&1 || true
fi
rm -rf "$work/pgrx-data"
# cargo pgrx test installs its debug build in place: never into a file a server has mapped.
renew_installed_library
cargo pgrx test "pg$PG_MAJOR" "${runas[@]}" --pgdata "$work/pgrx-data"

echo "==> installing the release build into $($PG_CONFIG --pkglibdir)"
install_release

echo "==> packaging: a tarball and a .deb that install without Rust"
scripts/package.sh --staged > "$work/package.out"
tarball=$(sed -n 1p "$work/package.out")
deb=$(sed -n 2p "$work/package.out")
rm -rf "$work/pkgcheck" && mkdir -p "$work/pkgcheck"
tar -C "$work/pkgcheck" -xzf "$tarball"
DESTDIR="$work/pkgcheck/root" "$work/pkgcheck"/pg_throttle-*/install.sh >/dev/null
cmp "$work/pkgcheck/root$($PG_CONFIG --pkglibdir)/pg_throttle.so" "$($PG_CONFIG --pkglibdir)/pg_throttle.so"
for f in pg_throttle.control pg_throttle--0.1.0.sql pg_throttle--0.7.0--0.8.0.sql; do
    test -f "$work/pkgcheck/root$($PG_CONFIG --sharedir)/extension/$f" || { echo "package: $f missing" >&2; exit 1; }
done
dpkg-deb -c "$deb" > "$work/pkgcheck/deb.list"
grep -q "usr/lib/postgresql/$PG_MAJOR/lib/pg_throttle.so" "$work/pkgcheck/deb.list"
dpkg-deb -f "$deb" Depends | grep -q "postgresql-$PG_MAJOR"
rm -rf "$work/pkgcheck"

echo "==> client-side tests against real servers"
cargo test -p pg_throttle_tests -- --test-threads 2
