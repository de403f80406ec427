#!/usr/bin/env bash
# Installs what pg_throttle needs to build, test and run on a Debian machine. Safe to re-run:
# every step checks first and does nothing when its work is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "setup.sh: installing Debian packages needs root: run it as root (or install sudo)" >&2
        exit 1
    fi
}

# 1. Debian packages: the server, its headers, libclang for bindgen, sudo for pgrx's --runas,
#    python3 for the demo's chart, psycopg 3 for the Python example sender (its test), and
#    Node.js with npm for the Node one, unless a Node.js is already installed.
packages=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo util-linux python3
          python3-psycopg)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    packages+=(nodejs npm)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. clippy (scripts/test.sh checks that every unsafe block says why it is sound), if the
#    toolchain was installed without it.
if ! cargo clippy --version >/dev/null 2>&1 && command -v rustup >/dev/null; then
    log "installing clippy"
    rustup component add clippy || log "clippy could not be installed: scripts/test.sh will say so"
fi

# 3. cargo-pgrx at exactly the version Cargo.toml pins.
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (takes several minutes once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# 4. Point pgrx at the system PostgreSQL (re-running init forces a full rebuild: only once).
if ! grep -qs "^pg$PG_MAJOR *=" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi

# 5. The Node example sender's one dependency (pg), from its lock file.
if [ ! -d examples/node/node_modules/pg ]; then
    log "npm ci in examples/node"
    (cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
fi
