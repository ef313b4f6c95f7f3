#!/usr/bin/env bash
# The long fuzz run: every target for SECONDS each (default 300) in a release build.
# Findings are written to fuzz/crashes/<target>/ and the run exits 1; with
# --save-corpus, inputs that reached new outcomes join fuzz/corpus/<target>/.
# Usage: scripts/fuzz.sh [--seconds N] [--target NAME]... [--seed S] [--save-corpus]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
seconds=300
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
cargo run --profile fuzz --quiet -p heirloom-fuzz -- --seconds "$seconds" "${args[@]}"
