#!/usr/bin/env bash
# Benchmarks against a real server (release build). Prints figures; never fails on time.
#   scripts/bench.sh [admit] [--rows N] [--runs N] [--caps] [--window]
#   scripts/bench.sh release | fidelity | throughput | accuracy | latency | scale | enqueue
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/common.sh
test_dir
install_release
cargo run -q --release -p pg_throttle_tests --bin bench -- "$@"
