#!/usr/bin/env bash
# Benchmarks against a real server (release build). Prints figures; never fails on time.
#   scripts/bench.sh [admit] [--rows N] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/common.sh
work=${PG_THROTTLE_TEST_DIR:-/var/tmp/pg_throttle_test}
pg_owned_dir "$work"
export PG_THROTTLE_TEST_DIR="$work"
sudo_flag=()
if ! is_root && [ ! -w "$($PG_CONFIG --pkglibdir)" ]; then sudo_flag=(--sudo); fi
cargo pgrx install --release -c "$PG_CONFIG" "${sudo_flag[@]}" >/dev/null
cargo run -q --release -p pg_throttle_tests --bin bench -- "$@"
