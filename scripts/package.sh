#!/usr/bin/env bash
# Builds installable artefacts of pg_throttle for the PostgreSQL that $PG_CONFIG names (15 by
# default), for database hosts without Rust:
#   target/dist/pg_throttle-VERSION-pgMAJOR-ARCH.tar.gz   the library, the control file and
#       every SQL script (install and upgrade), with install.sh and INSTALL.txt
#   target/dist/postgresql-MAJOR-pg-throttle_VERSION_ARCH.deb   the same files as a Debian
#       package (depends on postgresql-MAJOR)
# With --staged, it packs what `cargo pgrx package` last left in target/pkg (scripts/test.sh
# uses it right after installing that build) instead of building again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

staged=false
[ "${1:-}" = "--staged" ] && staged=true

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
major=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
libdir=$("$PG_CONFIG" --pkglibdir)
extdir="$("$PG_CONFIG" --sharedir)/extension"
pkg=target/pkg
dist=target/dist

if ! $staged || [ ! -f "$pkg$libdir/pg_throttle.so" ]; then
    rm -rf "$pkg"
    cargo pgrx package -c "$PG_CONFIG" --out-dir "$pkg" >/dev/null
fi

name="pg_throttle-$version-pg$major-$arch"
rm -rf "$dist/$name" "$dist/deb"
mkdir -p "$dist/$name/lib" "$dist/$name/extension"
cp "$pkg$libdir/pg_throttle.so" "$dist/$name/lib/"
cp "$pkg$extdir"/* "$dist/$name/extension/"
# Released install scripts (pgrx packages only the current one and the upgrade scripts).
for f in sql/pg_throttle--[0-9]*.[0-9]*.[0-9]*.sql; do
    case "$f" in *--*--*) ;; *) cp "$f" "$dist/$name/extension/" ;; esac
done

cat > "$dist/$name/install.sh" <<'EOF'
#!/bin/sh
# Installs pg_throttle into the PostgreSQL that pg_config (or $PG_CONFIG) names. Each file is
# copied beside its destination and renamed over it: a running server keeps the library it
# loaded until it restarts. DESTDIR, if set, is prepended to every path (for packagers).
set -eu
cd "$(dirname "$0")"
PG_CONFIG=${PG_CONFIG:-pg_config}
libdir="${DESTDIR:-}$("$PG_CONFIG" --pkglibdir)"
extdir="${DESTDIR:-}$("$PG_CONFIG" --sharedir)/extension"
mkdir -p "$libdir" "$extdir"
put() { cp "$1" "$2/.$(basename "$1").new.$$" && mv -f "$2/.$(basename "$1").new.$$" "$2/$(basename "$1")"; }
put lib/pg_throttle.so "$libdir"
for f in extension/*; do put "$f" "$extdir"; done
echo "pg_throttle installed into $libdir and $extdir"
echo "next: shared_preload_libraries = 'pg_throttle' in postgresql.conf, restart, then CREATE EXTENSION pg_throttle;"
EOF
chmod +x "$dist/$name/install.sh"

cat > "$dist/$name/INSTALL.txt" <<EOF
pg_throttle $version for PostgreSQL $major ($arch)

1. As a user who may write PostgreSQL's directories (root, or through sudo):
       ./install.sh                    (PG_CONFIG=/path/to/pg_config ./install.sh for another server)
2. In postgresql.conf:
       shared_preload_libraries = 'pg_throttle'
       throttle.database_name = 'yourdb'   (the database the release worker serves)
   then restart the server.
3. In that database:
       CREATE EXTENSION pg_throttle;   (or ALTER EXTENSION pg_throttle UPDATE from an older version)

Rust is not needed on this host. The library was built against PostgreSQL $major's headers:
it loads only into a PostgreSQL $major server.
EOF

tar -C "$dist" -czf "$dist/$name.tar.gz" "$name"

# The Debian package: the same files at the paths of Debian's PostgreSQL.
deb="$dist/deb"
mkdir -p "$deb/DEBIAN" "$deb/usr/lib/postgresql/$major/lib" "$deb/usr/share/postgresql/$major/extension" \
         "$deb/usr/share/doc/postgresql-$major-pg-throttle"
cp "$dist/$name/lib/pg_throttle.so" "$deb/usr/lib/postgresql/$major/lib/"
cp "$dist/$name/extension/"* "$deb/usr/share/postgresql/$major/extension/"
cp README.md "$deb/usr/share/doc/postgresql-$major-pg-throttle/"
cat > "$deb/DEBIAN/control" <<EOF
Package: postgresql-$major-pg-throttle
Version: $version
Architecture: $arch
Maintainer: pg_throttle maintainers
Depends: postgresql-$major
Section: database
Priority: optional
Description: throttle outbound messages (SMS, MMS, WhatsApp, iMessage) inside PostgreSQL
 pg_throttle keeps outbound messages within providers' and carriers' limits: token buckets
 in shared memory, calendar and queue caps, contact rules, and a release worker that moves
 messages from a pending to a ready table as fast as the limits allow.
EOF
dpkg-deb --root-owner-group --build "$deb" "$dist/postgresql-$major-pg-throttle_${version}_$arch.deb" >/dev/null
rm -rf "$deb"
echo "$dist/$name.tar.gz"
echo "$dist/postgresql-$major-pg-throttle_${version}_$arch.deb"
