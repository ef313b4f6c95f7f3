#!/usr/bin/env bash
# Training steps on CPU: the worker's training code (heirloom-train, release) against
# PyTorch eager, same model, data, batch, Adam, held-out split and threads, interleaved
# in one run (BENCHMARKS.md). ROUNDS=N repeats each pair (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
cargo build --release --quiet -p heirloom-worker --bin heirloom-train
work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-training.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 bench/eager_train.py make-data "$work/blobs.safetensors" 20000 64
python3 bench/eager_train.py make-data "$work/images.safetensors" 1280 3072
mlp='{"mlp": {"input_features": 64, "hidden": [256, 256], "num_classes": 10}}'
resnet='{"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}'
steps_per_second() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["steps_per_second"], 2))'; }
printf '%-28s %7s %5s %8s %12s %12s %7s\n' model threads batch epochs heirloom eager ratio
for case in "mlp|$mlp|blobs|64|5" "resnet-18 32x32|$resnet|images|32|1"; do
  IFS='|' read -r name arch data batch epochs <<<"$case"
  for threads in 1 2; do
    for round in $(seq "${ROUNDS:-2}"); do
      ours=$(target/release/heirloom-train --device cpu --threads "$threads" fit --arch "$arch" \
        --dataset "$work/$data.safetensors" --out "$work/w.safetensors" \
        --epochs "$epochs" --batch-size "$batch" | steps_per_second)
      theirs=$(python3 bench/eager_train.py eager "$work/$data.safetensors" "$arch" "$epochs" "$threads" "$batch" \
        | steps_per_second)
      ratio=$(python3 -c "print(f'{$ours / $theirs:.2f}x')")
      printf '%-28s %7s %5s %8s %12s %12s %7s\n' "$name" "$threads" "$batch" "$epochs" "$ours" "$theirs" "$ratio"
    done
  done
done
