#!/usr/bin/env bash
# Data-parallel scaling on CPU (BENCHMARKS.md): the worker's training code
# (heirloom-train, release) on 1 rank × 1 thread against 2 ranks × 1 thread each,
# meeting over PyTorch's c10d (Gloo) on loopback, same model, data, global batch, seed
# and data order. Every rank takes every step, so steps/s compare directly; efficiency
# is the speed-up over the number of ranks. ROUNDS=N repeats each pair (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
cargo build --release --quiet -p heirloom-worker --bin heirloom-train
work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-data-parallel.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 bench/eager_train.py make-data "$work/blobs.safetensors" 20000 64
python3 bench/eager_train.py make-data "$work/images.safetensors" 1280 3072
mlp='{"mlp": {"input_features": 64, "hidden": [256, 256], "num_classes": 10}}'
resnet='{"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}'
steps_per_second() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["steps_per_second"], 2))'; }
fit() { # ranks arch data batch epochs
  local ranks=$1 arch=$2 data=$3 batch=$4 epochs=$5 port rank
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for rank in $(seq 0 $((ranks - 1))); do
    flags=()
    [ "$ranks" -gt 1 ] && flags=(--rank "$rank" --world-size "$ranks" --store "127.0.0.1:$port")
    target/release/heirloom-train --device cpu --threads 1 fit --arch "$arch" \
      --dataset "$work/$data.safetensors" --out "$work/w$rank.safetensors" \
      --epochs "$epochs" --batch-size "$batch" "${flags[@]}" >"$work/rank$rank.json" &
  done
  wait
  steps_per_second <"$work/rank0.json"
}
printf '%-18s %6s %12s %12s %8s %10s\n' model batch "1 rank" "2 ranks" speed-up efficiency
for case in "mlp|$mlp|blobs|256|2" "resnet-18 32x32|$resnet|images|64|1"; do
  IFS='|' read -r name arch data batch epochs <<<"$case"
  for round in $(seq "${ROUNDS:-2}"); do
    one=$(fit 1 "$arch" "$data" "$batch" "$epochs")
    two=$(fit 2 "$arch" "$data" "$batch" "$epochs")
    python3 -c "one, two = $one, $two; print(f'%-18s %6s %12.2f %12.2f %7.2fx %9.0f%%' % ('$name', $batch, one, two, two / one, 50 * two / one))"
  done
done
