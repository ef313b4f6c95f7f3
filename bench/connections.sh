#!/usr/bin/env bash
# The connection load test (RELIABILITY.md): the coordinator's release binary holding
# thousands of idle TLS connections under a steady call rate, then flooded over its cap,
# against a private PostgreSQL. HEIRLOOM_LOAD_CONNECTIONS (2000), HEIRLOOM_LOAD_RATE
# (200 calls/s) and HEIRLOOM_LOAD_SECONDS (60) change the load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
# Each held connection is a descriptor on each side.
ulimit -n "$(ulimit -Hn)"
start_test_postgres
cargo bench -p heirloom-coordinator --bench connections
