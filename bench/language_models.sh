#!/usr/bin/env bash
# Language-model training throughput on CPU (BENCHMARKS.md): the worker's training code
# (heirloom-train, release) against PyTorch eager (transformers' LlamaForCausalLM and
# GPT2LMHeadModel, the same wheel's libtorch), same model, weights, token data, rows and
# order, batch, precision and threads (1), interleaved round by round. Prints tokens/s
# for both and their ratio (time per token, worker / eager: below 1 is faster), and
# both sides' final losses (equal within the precision's tolerance, see
# worker/tests/language_models.rs). ROUNDS=N repeats each case (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
cargo build --release --quiet -p heirloom-worker --bin heirloom-train
work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-language-models.XXXXXX")
trap 'rm -rf "$work"' EXIT
peer=worker/tests/interop/transformers_peer.py
python3 scripts/make_corpora.py "$work/text" >/dev/null
shards=("$work/text"/sentences-*.safetensors)
small='{"llama": {"vocab_size": 257, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}}'
wide='{"llama": {"vocab_size": 257, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 64}}'
gpt2='{"gpt2": {"vocab_size": 257, "n_positions": 64, "n_embd": 128, "n_layer": 4, "n_head": 4, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}'
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
printf '%-12s %-11s %5s %14s %14s %8s %10s %10s\n' model precision batch "worker tok/s" "eager tok/s" ratio "worker loss" "eager loss"
for case in "llama 64x2|$small|fp32" "llama 64x2|$small|bf16-mixed" "llama 256x4|$wide|fp32" "llama 256x4|$wide|bf16-mixed" "gpt2 128x4|$gpt2|fp32"; do
  IFS='|' read -r name arch precision <<<"$case"
  dir="$work/$(echo "$name" | tr ' ' _)"
  mkdir -p "$dir"
  python3 "$peer" make "$arch" "$dir" >/dev/null 2>&1
  # The tokens both sides train on in two epochs: every shard less its held-out fifth.
  tokens=$(python3 -c "import math, sys; from safetensors.numpy import load_file; print(2 * sum((t.shape[0] - math.ceil(0.2 * t.shape[0])) * t.shape[1] for t in (load_file(p)['tokens'] for p in sys.argv[1:])))" "${shards[@]}")
  for round in $(seq "${ROUNDS:-2}"); do
    target/release/heirloom-train --device cpu --threads 1 fit --arch "$arch" \
      --parent "$dir/model.safetensors" --shards "${shards[@]}" --out "$dir/out.safetensors" \
      --epochs 2 --batch-size 32 --learning-rate 0.003 --precision "$precision" >"$dir/ours.json"
    python3 "$peer" train-eager "$arch" "$dir/model.safetensors" "$precision" 2 32 0.003 1 \
      "${shards[@]}" 2>/dev/null >"$dir/eager.json"
    # The worker's seconds cover training only (its steps/s); so do eager's.
    ours=$(python3 -c "import json; r = json.load(open('$dir/ours.json')); print($tokens * r['steps_per_second'] / r['steps'])")
    eager=$(field tokens_per_second <"$dir/eager.json")
    python3 -c "print('%-12s %-11s %5d %14.0f %14.0f %7.2fx %10.4f %10.4f' % ('$name', '$precision', 32, $ours, $eager, $eager / $ours, $(field final_loss <"$dir/ours.json"), $(field final_loss <"$dir/eager.json")))"
  done
done
