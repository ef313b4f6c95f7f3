#!/usr/bin/env bash
# Artifact store figures (BENCHMARKS.md): a private PostgreSQL, then the release-built bench.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-bench.XXXXXX")
trap 'pg_stop "$work/pg"; rm -rf "$work"' EXIT
port=$(free_port)
pg_start "$work/pg" "$port"
export HEIRLOOM_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
cargo bench -p heirloom-worker --bench artifacts
