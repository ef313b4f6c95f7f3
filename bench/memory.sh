#!/usr/bin/env bash
# How close a plan's memory estimate comes to what a worker really uses (BENCHMARKS.md).
# For each architecture: the estimate from `heirloom job plan`, then the same job run by a
# fresh worker process, whose growth in peak resident memory (VmHWM after the job minus
# VmRSS while idle, registered) is the measurement. CPU, release binaries, loopback.
#   ./bench/memory.sh            # EXAMPLES=512 by default
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh
cargo build --release --bins --quiet
bin=target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-memory.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_stop "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT

pg_port=$(free_port)
pg_start "$work/pg" "$pg_port"
port=$(free_port)
export HEIRLOOM_COORDINATOR="http://127.0.0.1:$port"
"$bin/heirloom-coordinator" --listen "127.0.0.1:$port" --insecure-plaintext \
  --database-url "postgres://postgres@127.0.0.1:$pg_port/postgres" \
  --artifacts "$work/artifacts" --admin-token-file "$work/admin.token" >"$work/coordinator.log" 2>&1 &
pids+=($!)
until [ -s "$work/admin.token" ] && HEIRLOOM_TOKEN_FILE="$work/admin.token" \
  "$bin/heirloom" token whoami >/dev/null 2>&1; do sleep 0.2; done
export HEIRLOOM_TOKEN_FILE="$work/admin.token"
heirloom() { "$bin/heirloom" "$@"; }
heirloom token create memory-worker --role worker >"$work/worker.token"

python3 - "$work" "${EXAMPLES:-512}" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
work, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for name, features in [("flat", 64), ("image", 3 * 32 * 32)]:
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (np.arange(n) % 10).astype(np.int64)
    save_file({"x": x, "y": y}, f"{work}/{name}.safetensors")
PY
heirloom dataset register flat "$work/flat.safetensors" >/dev/null
heirloom dataset register image "$work/image.safetensors" >/dev/null

kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$2/status"; }
printf "%-34s %6s %12s %12s %7s\n" architecture batch "estimate" "measured" ratio
run=0
measure() { # name dataset batch arch
  local name=$1 dataset=$2 batch=$3 arch=$4
  run=$((run + 1))
  local estimate
  estimate=$(heirloom --output json job plan train "m$run" --dataset "$dataset" --epochs 1 \
    --batch-size "$batch" --arch "$arch" | python3 -c 'import json,sys; print(json.load(sys.stdin)["memory"]["totalBytes"])')
  "$bin/heirloom-worker" --name "memory-$run" --threads 2 --cache "$work/cache-$run" \
    --token-file "$work/worker.token" >"$work/worker-$run.log" 2>&1 &
  local worker=$!
  pids+=("$worker")
  until grep -q "registered" "$work/worker-$run.log" 2>/dev/null; do sleep 0.2; done
  sleep 1
  local idle
  idle=$(kib VmRSS "$worker")
  heirloom job train "m$run" --dataset "$dataset" --epochs 1 --batch-size "$batch" \
    --arch "$arch" --watch >/dev/null
  local peak
  peak=$(kib VmHWM "$worker")
  kill "$worker"
  local measured=$(((peak - idle) * 1024))
  python3 -c 'import sys; n, b, e, m = sys.argv[1:]; e, m = int(e), int(m)
print(f"{n:<34} {b:>6} {e / 2**20:8.1f} MiB {m / 2**20:8.1f} MiB {e / m:7.2f}")' \
    "$name" "$batch" "$estimate" "$measured"
}
measure "mlp 64→256→256→10" flat 64 '{"mlp": {"input_features": 64, "hidden": [256, 256], "num_classes": 10}}'
measure "small_cnn 3×32×32 [32,64]" image 64 '{"small_cnn": {"in_channels": 3, "height": 32, "width": 32, "channels": [32, 64], "num_classes": 10}}'
measure "resnet18 3×32×32" image 32 '{"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}'
measure "resnet18 3×32×32" image 128 '{"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}'
measure "vgg11 3×32×32" image 32 '{"vgg": {"depth": 11, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}'
