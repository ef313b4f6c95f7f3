#!/usr/bin/env bash
# The control plane (BENCHMARKS.md): submit → start latency, queue throughput, and a
# thousand connected workers, against the coordinator's release binary and a private
# PostgreSQL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
# A thousand workers are a thousand connections on each side.
ulimit -n "$(ulimit -Hn)"
start_test_postgres
cargo bench -p heirloom-coordinator --bench control_plane
