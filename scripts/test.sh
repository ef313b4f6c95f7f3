#!/usr/bin/env bash
# Runs every test: installs what is missing, starts a private PostgreSQL for the
# integration tests (each test makes its own database in it) and an S3-compatible server
# (moto) for the artifact tests' S3 runs, runs the workspace's tests, then every shell block
# of the README's Quick start and CLI reference (scripts/check-readme.sh), and stops both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh

start_test_postgres
start_test_s3

# The chaos suite runs the coordinator's binary as a process of its own: build every
# binary first, so the one it starts is never stale.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"

# The README's Quick start and CLI reference, run as a new user would paste them.
./scripts/check-readme.sh
