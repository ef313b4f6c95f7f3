#!/usr/bin/env bash
# Runs every test: installs what is missing, starts a private PostgreSQL for the
# integration tests (each test makes its own database in it), runs the workspace's
# tests, and stops the server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh

start_test_postgres

cargo test --workspace --no-fail-fast "$@"
