#!/usr/bin/env bash
# Runs every test: installs what is missing, starts a private PostgreSQL for the
# integration tests (each test makes its own database in it), runs the workspace's
# tests, and stops the server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-test.XXXXXX")
trap 'pg_stop "$work/pg"; rm -rf "$work"' EXIT
port=$(free_port)
pg_start "$work/pg" "$port"
export HEIRLOOM_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"

cargo test --workspace --no-fail-fast "$@"
