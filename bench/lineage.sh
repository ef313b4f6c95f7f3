#!/usr/bin/env bash
# Lineage queries at a million models (BENCHMARKS.md): a private PostgreSQL, then the
# release-built bench, which generates the graph and asks every lineage question.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
start_test_postgres
cargo bench -p heirloom-coordinator --bench lineage
