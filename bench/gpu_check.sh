#!/usr/bin/env bash
# GPU check, for a machine with CUDA and PyTorch but no Rust: heirloom-train (the worker's
# own training code) on CUDA beside PyTorch eager on the same model, data, batch size and
# bookkeeping, then a fine-tune trained on the GPU checked for byte-identical frozen
# tensors. Each pair runs twice; read the second round (the first warms up CUDA).
#   bench/gpu_check.sh PATH/TO/heirloom-train
set -euo pipefail
bin=$1
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
data=$(mktemp -d)
python3 bench/eager_train.py make-data "$data/blobs.safetensors" 100000

compare() { # NAME ARCH BATCH EPOCHS
  for round in 1 2; do
    "$bin" fit --arch "$2" --dataset "$data/blobs.safetensors" --out "$data/$1.safetensors" \
      --device cuda --batch-size "$3" --epochs "$4" | sed "s/^/heirloom $1 round $round: /"
    python3 bench/eager_train.py eager "$data/blobs.safetensors" "$2" "$4" 1 "$3" \
      | sed "s/^/eager    $1 round $round: /"
  done
}
small='{"mlp":{"input_features":64,"hidden":[256,256],"num_classes":10}}'
compare small "$small" 64 2
compare large '{"mlp":{"input_features":64,"hidden":[4096,4096,4096],"num_classes":10}}' 1024 3

"$bin" fit --arch "$small" --dataset "$data/blobs.safetensors" --parent "$data/small.safetensors" \
  --trainable 'fc.*' --out "$data/tuned.safetensors" --device cuda --epochs 1 | sed "s/^/finetune: /"
python3 bench/eager_train.py same-frozen "$data/small.safetensors" "$data/tuned.safetensors" 'fc.*'
