#!/usr/bin/env bash
# Benchmarks against real servers (release build, installed first). Prints figures, then one
# summary table: each figure, this build, the ceiling it is compared with (measured in the
# same run), the ratio, the 0.3.0 figure (bench/baseline-0.3.0.tsv) and the issue's target.
# Never fails on time.
#   scripts/bench.sh                  every section but fidelity (7-9 minutes on 2 cores, after the build)
#   scripts/bench.sh SECTION ...      admit | throughput | accuracy | latency | scale | enqueue | delivery |
#                                     clients | fidelity (over 3 minutes alone: only when named) |
#                                     contacts (10 million idle contacts, PG_THROTTLE_BENCH_CONTACTS: only when named) |
#                                     release (throughput, accuracy, latency, scale, enqueue) | all
#   options: --rows N --runs N --caps --window --conf 'name = value' (admit);
#            --baseline FILE (figures to print beside this build's); --save FILE (write this
#            run's figures in the baseline's format)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/common.sh
test_dir
install_release
cargo run -q --release -p pg_throttle_tests --bin bench -- "$@"
