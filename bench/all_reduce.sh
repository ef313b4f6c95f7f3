#!/usr/bin/env bash
# All-reduce throughput on CPU (BENCHMARKS.md): the worker's c10d layer
# (`heirloom-train all-reduce`, release) beside PyTorch's own torch.distributed (gloo),
# two ranks on loopback, the same buffer sizes, interleaved. ROUNDS=N repeats (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
cargo build --release --quiet -p heirloom-worker --bin heirloom-train
work=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-all-reduce.XXXXXX")
trap 'rm -rf "$work"' EXIT
sizes=4096,1048576,16777216,104857600
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
run() { # heirloom|torch: prints rank 0's lines
  local port; port=$(free_port)
  for rank in 0 1; do
    if [ "$1" = heirloom ]; then
      target/release/heirloom-train --device cpu --threads 1 all-reduce --rank "$rank" --world-size 2 \
        --store "127.0.0.1:$port" --bytes "$sizes" --repeats 20 >"$work/$1$rank.json" &
    else
      python3 bench/eager_train.py all-reduce "$rank" 2 "$port" "$sizes" 20 >"$work/$1$rank.json" &
    fi
  done
  wait
  cat "$work/${1}0.json"
}
printf '%-10s %12s %14s %14s %8s\n' bytes round "heirloom ms" "torch ms" ratio
for round in $(seq "${ROUNDS:-2}"); do
  run heirloom >"$work/ours"
  run torch >"$work/theirs"
  python3 - "$work/ours" "$work/theirs" "$round" <<'PY'
import json, sys
ours = [json.loads(line) for line in open(sys.argv[1])]
theirs = [json.loads(line) for line in open(sys.argv[2])]
for a, b in zip(ours, theirs):
    print(f"{a['bytes']:<10} {sys.argv[3]:>12} {a['milliseconds']:>14.3f} {b['milliseconds']:>14.3f} {a['milliseconds'] / b['milliseconds']:>7.2f}x")
PY
done
