#!/usr/bin/env bash
# Runs every test: installs what is missing, starts a private PostgreSQL for the
# integration tests (each test makes its own database in it) and an S3-compatible server
# (moto) for the artifact tests' S3 runs, runs the workspace's tests, and stops both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh

start_test_postgres
start_test_s3

cargo test --workspace --no-fail-fast "$@"
