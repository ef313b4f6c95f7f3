#!/usr/bin/env bash
# Artifact store figures (BENCHMARKS.md): a private PostgreSQL, then the release-built bench.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
start_test_postgres
cargo bench -p heirloom-worker --bench artifacts
