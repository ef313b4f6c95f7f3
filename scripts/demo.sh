#!/usr/bin/env bash
# The demo: a private PostgreSQL, a coordinator and a worker on this machine; a base
# model trained on digits 0-4, transferred to digits 5-9, fine-tuned twice (one with a
# WiSE-FT blend), the two siblings interpolated, and a model composed from two parents
# (its plan printed first); a recipe taken from one job, run on two other parents,
# derived, diffed and traced to the models it made; a small Llama trained on one made-up
# corpus and fine-tuned on another, each scored on both (perplexity); then the lineage tree
# with each model's held-out accuracy and what it inherited,
# trained or added, and the lineage questions (blame, path, common ancestors, dataset
# impact, filtered ancestors, the graph). Everything stops at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
source scripts/lib.sh

echo "== building"
cargo build --workspace --bins --quiet
bin=target/debug

work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_stop "$work/pg"
  if [ "${KEEP_DEMO:-0}" = 1 ]; then echo "demo files kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== starting PostgreSQL, a coordinator and a worker (files in $work)"
pg_port=$(free_port)
pg_start "$work/pg" "$pg_port"
# TLS everywhere: a private CA, a certificate for the coordinator, one for the worker
# (mutual TLS). The coordinator writes the first admin token to a file of its own.
"$bin/heirloom" certs "$work/tls" >/dev/null
port=$(free_port)
export HEIRLOOM_COORDINATOR="https://127.0.0.1:$port" HEIRLOOM_CA_CERT="$work/tls/ca.pem"
export HEIRLOOM_ARTIFACTS="$work/artifacts"
mkdir -p "$HEIRLOOM_ARTIFACTS"
"$bin/heirloom-coordinator" --listen "127.0.0.1:$port" \
  --database-url "postgres://postgres@127.0.0.1:$pg_port/postgres" \
  --tls-cert "$work/tls/coordinator.pem" --tls-key "$work/tls/coordinator.key" \
  --worker-client-ca "$work/tls/ca.pem" --admin-token-file "$work/admin.token" \
  --explorer-listen "127.0.0.1:${HEIRLOOM_EXPLORER_PORT:-7080}" \
  --metrics-listen "127.0.0.1:${HEIRLOOM_METRICS_PORT:-9464}" \
  >"$work/coordinator.log" 2>&1 &
pids+=($!)
until [ -s "$work/admin.token" ] && HEIRLOOM_TOKEN_FILE="$work/admin.token" \
  "$bin/heirloom" token whoami >/dev/null 2>&1; do
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/coordinator.log"; exit 1; }
  sleep 0.2
done
heirloom() { "$bin/heirloom" "$@"; }
echo "-- tokens: the admin makes one for people (submitter) and one for the worker"
export HEIRLOOM_TOKEN_FILE="$work/admin.token"
heirloom token create demo-user --role submitter >"$work/user.token"
heirloom token create demo-worker --role worker >"$work/worker.token"
export HEIRLOOM_TOKEN_FILE="$work/user.token"
heirloom token whoami
explorer="https://127.0.0.1:${HEIRLOOM_EXPLORER_PORT:-7080}/"
echo "-- the lineage explorer: $explorer (log in with the token in $work/user.token;"
echo "   the certificate is the demo's own CA: $work/tls/ca.pem)"
# The workers share no directory with the coordinator: blobs come over gRPC into their
# caches. Two of them, so that a job can train on two ranks at once (one thread each).
for worker in demo-worker demo-worker-2; do
  "$bin/heirloom-worker" --name "$worker" --threads 1 \
    --cache "$work/$worker-cache" --token-file "$work/worker.token" \
    --client-cert "$work/tls/worker.pem" --client-key "$work/tls/worker.key" \
    >"$work/$worker.log" 2>&1 &
  pids+=($!)
done

echo "== datasets from scikit-learn's 8x8 digits"
python3 scripts/make_digits.py "$work/data"
heirloom dataset register digits-0-4 "$work/data/digits-0-4.safetensors"
heirloom dataset register digits-5-9 "$work/data/digits-5-9.safetensors"

echo "== train a base model on digits 0-4, on two ranks at once (one per worker, gradients"
echo "   summed by PyTorch's Gloo all-reduce; the same weights one rank would reach)"
heirloom job train digits-base --dataset digits-0-4 --epochs 30 --seed 1 --ranks 2 --watch \
  --arch '{"mlp": {"input_features": 64, "hidden": [128, 64], "num_classes": 5}}'
base_job=$(heirloom --output json model show digits-base \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["jobId"])')
heirloom job get "$base_job"

echo "== transfer it to digits 5-9: frozen first block, last block unfrozen, new 5-way head"
heirloom job transfer digits-5-9-transfer --parent digits-base --num-classes 5 --unfreeze-blocks 1 \
  --dataset digits-5-9 --epochs 30 --seed 2 --learning-rate 0.005 --watch

echo "== fine-tune the transfer twice: last block + head blended back halfway (WiSE-FT), and head only"
heirloom job finetune digits-5-9-wise --parent digits-5-9-transfer --wise-ft 0.5 \
  --trainable 'hidden.1.*' --trainable 'fc.*' --dataset digits-5-9 --epochs 20 --seed 3 --watch
heirloom job finetune digits-5-9-head --parent digits-5-9-transfer --trainable 'fc.*' \
  --dataset digits-5-9 --epochs 20 --seed 4 --watch

echo "== direct inheritance: interpolate the two sibling fine-tunes halfway"
heirloom job direct digits-5-9-blend --parent digits-5-9-wise --with digits-5-9-head --alpha 0.5 \
  --dataset digits-5-9 --watch

echo "== compose: first block from the base, second from the WiSE-FT model, a new head trained"
echo "-- plan before run: each tensor's origin, what trains, every check, the memory, the data shift"
compose=(--dataset digits-5-9 --epochs 20 --seed 5
  --arch '{"mlp": {"input_features": 64, "hidden": [128, 64], "num_classes": 5}}'
  --module hidden.0=digits-base:hidden.0 --module hidden.1=digits-5-9-wise:hidden.1 --trainable 'fc.*')
heirloom job plan compose digits-5-9-composed "${compose[@]}"
heirloom job compose digits-5-9-composed "${compose[@]}" --watch

echo "== recipes: inherit how a model was made, not only its weights"
echo "-- the recipe of the head-only fine-tune, taken from its job"
heirloom recipe create head-only --from-model digits-5-9-head
echo "-- two models from that one recipe, on two other parents"
heirloom job from-recipe digits-5-9-wise-head --recipe head-only --parent digits-5-9-wise \
  --dataset digits-5-9 --watch
heirloom job from-recipe digits-5-9-blend-head --recipe head-only --parent digits-5-9-blend \
  --dataset digits-5-9 --watch
echo "-- a derived version: the last block trains too, more gently, and a model from it"
heirloom recipe derive head-only --set '{"trainable": ["hidden.1.*", "fc.*"], "hyperparameters": {"learning_rate": 0.0005}}'
heirloom recipe diff head-only@1 head-only@2
heirloom job from-recipe digits-5-9-deeper --recipe head-only@2 --parent digits-5-9-transfer \
  --dataset digits-5-9 --watch
echo "-- lineage by recipe: every model made with head-only or a version derived from it"
heirloom recipe models head-only

echo "== a language model: a small Llama (transformers' names) trained on a grammar's sentences,"
echo "   fine-tuned on written-out sums, each scored on the other corpus too (perplexity)"
python3 scripts/make_corpora.py "$work/text"
heirloom dataset register-tokens sentences --vocab-size 257 --pad-token-id 0 "$work/text"/sentences-*.safetensors
heirloom dataset register-tokens arithmetic --vocab-size 257 --pad-token-id 0 "$work/text"/arithmetic-*.safetensors
llama='{"llama": {"vocab_size": 257, "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "max_position_embeddings": 64, "dtype": "bfloat16"}}'
heirloom job train story-llama --dataset sentences --arch "$llama" --precision bf16-mixed \
  --epochs 4 --batch-size 32 --learning-rate 0.003 --seed 6 --watch
heirloom job finetune sums-llama --parent story-llama --dataset arithmetic --precision bf16-mixed \
  --trainable 'model.layers.1.*' --trainable 'lm_head.*' --epochs 6 --batch-size 32 \
  --learning-rate 0.003 --seed 7 --watch
echo "-- each scored on the other corpus: a direct copy measured on it, no training"
heirloom job direct story-llama-on-sums --parent story-llama --dataset arithmetic --watch
heirloom job direct sums-llama-on-stories --parent sums-llama --dataset sentences --watch
heirloom model tree story-llama
heirloom model show sums-llama

echo "== lineage, with what each model inherited, trained or added"
heirloom model tree digits-base
echo
heirloom model tensors digits-5-9-composed

echo "== lineage questions, one call each"
echo "-- where did the composed model's second layer last change?"
heirloom lineage blame digits-5-9-composed hidden.1.weight
echo "-- the line of descent from the base to the blend"
heirloom lineage path digits-base digits-5-9-blend
echo "-- what the two sibling fine-tunes share"
heirloom lineage common digits-5-9-wise digits-5-9-head
echo "-- everything that trained on digits 0-4, and everything below it"
heirloom lineage impact digits-0-4
echo "-- the blend's ancestors along direct and finetune edges only"
heirloom lineage ancestors digits-5-9-blend --relation direct --relation finetune
echo "-- the graph around the transfer, as Mermaid (also --format dot|json, --image graph.svg)"
heirloom lineage graph digits-5-9-transfer --up 1 --down 1 --format mermaid

echo "== export it as safetensors and load it with PyTorch"
heirloom model export digits-5-9-composed --out "$work/composed.safetensors"
python3 - "$work/composed.safetensors" <<'PY'
import sys, torch
from safetensors.torch import load_file
state = load_file(sys.argv[1])
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
model.load_state_dict({k.replace("hidden.0", "0").replace("hidden.1", "2").replace("fc", "4"): v for k, v in state.items()})
print("PyTorch loaded", ", ".join(f"{k} {list(v.shape)}" for k, v in state.items()))
PY

echo "== security: a reader may look but not submit"
HEIRLOOM_TOKEN_FILE="$work/admin.token" heirloom token create demo-reader --role reader >"$work/reader.token" 2>/dev/null
HEIRLOOM_TOKEN_FILE="$work/reader.token" heirloom model list | head -3
if HEIRLOOM_TOKEN_FILE="$work/reader.token" heirloom job train not-allowed --dataset digits-0-4 \
  --arch '{"mlp": {"input_features": 64, "hidden": [8], "num_classes": 5}}'; then
  echo "a reader submitted a job" >&2; exit 1
fi

echo "== operations: a Prometheus scrape (every series: curl 127.0.0.1:${HEIRLOOM_METRICS_PORT:-9464}/metrics)"
curl -s "127.0.0.1:${HEIRLOOM_METRICS_PORT:-9464}/metrics" \
  | grep -E '^heirloom_(jobs\{|workers_connected|artifact_bytes_total|job_duration_seconds_(count|sum)\{kind="compose")' || true

echo "== the lineage explorer is at $explorer — models, each model's tensor provenance, the"
echo "   lineage graph, jobs with their curves, dataset impact (token: $(cat "$work/user.token"))"
composed=$(heirloom --output json model show digits-5-9-composed | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
job=$(heirloom --output json model show digits-5-9-composed | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobId"])')
for view in "" "models/$composed" "models/$composed/graph?depth=3" jobs "jobs/$job" datasets datasets/digits-0-4; do
  curl -s --cacert "$work/tls/ca.pem" -H "Authorization: Bearer $(cat "$work/user.token")" \
    -o /dev/null -w "   %{http_code} %{size_download} bytes  $explorer$view\n" "$explorer$view"
done
if [ -t 0 ]; then
  read -r -p "press Enter to stop the demo " _
fi
