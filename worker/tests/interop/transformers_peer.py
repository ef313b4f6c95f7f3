"""Hugging Face transformers' side of the language-model interop tests: tiny, randomly
initialised LlamaForCausalLM and GPT2LMHeadModel, nothing downloaded from a hub.

  state-dict ARCH_JSON                 the tensors save_pretrained writes for this
                                       architecture: [[name, shape, dtype], ...]
  make ARCH_JSON DIR [SEED]            a random model saved with save_pretrained in DIR
                                       (model.safetensors, config.json) and DIR/tokens.
                                       safetensors, token ids `x` [4, 12] to compare on
  compare ARCH_JSON WEIGHTS TOKENS LOGITS
                                       loads WEIGHTS with from_pretrained (every key used,
                                       none missing, none of another shape), runs TOKENS,
                                       prints the max abs difference to LOGITS and the dtype
  train-eager ARCH_JSON WEIGHTS PRECISION EPOCHS BATCH LR THREADS SHARD...
                                       PyTorch eager's side of a training run: fine-tunes
                                       every tensor of WEIGHTS on the shards with Adam, in
                                       the rows and order Heirloom's worker draws (the same
                                       seeded permutations of torch's CPU generator), with
                                       autocast for bf16-mixed and fp16-mixed (with
                                       GradScaler); prints its losses and
                                       tokens per second as JSON
"""

import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_DTYPES = {"F32": "f32", "BF16": "bf16", "F16": "f16", "I64": "i64"}


def config(arch):
    """The transformers config of Heirloom's architecture JSON: the same field names."""
    (kind, spec), = arch.items()
    spec = dict(spec)
    dtype = spec.pop("dtype", "float32")
    if kind == "llama":
        rope_theta = spec.pop("rope_theta", 10000.0)
        spec["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
        return transformers.LlamaConfig(**spec, dtype=dtype), transformers.LlamaForCausalLM, dtype
    if kind == "gpt2":
        return transformers.GPT2Config(**spec, dtype=dtype), transformers.GPT2LMHeadModel, dtype
    raise SystemExit(f"no transformers peer for {kind}")


def make_model(arch, seed=0):
    cfg, cls, dtype = config(arch)
    torch.manual_seed(seed)
    return cls(cfg).to(DTYPES[dtype]).eval(), cfg


def state_dict(arch):
    model, _ = make_model(arch)
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out)
        with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
            names = sorted(f.keys())
            tensors = [[n, list(f.get_slice(n).get_shape()), SAFETENSORS_DTYPES[f.get_slice(n).get_dtype()]] for n in names]
    print(json.dumps(tensors))


def make(arch, out, seed="0"):
    model, cfg = make_model(arch, int(seed))
    model.save_pretrained(out)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (4, 12), generator=generator)
    save_file({"x": tokens}, os.path.join(out, "tokens.safetensors"))


def compare(arch, weights, tokens, logits):
    cfg, cls, dtype = config(arch)
    with tempfile.TemporaryDirectory() as out:
        cfg.save_pretrained(out)
        shutil.copy(weights, os.path.join(out, "model.safetensors"))
        model, info = cls.from_pretrained(out, dtype=DTYPES[dtype], output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"transformers did not load every tensor as it is: {problems}")
    model.eval()
    with torch.no_grad():
        ours = model(load_file(tokens)["x"]).logits
    theirs = load_file(logits)["logits"]
    print(json.dumps({
        "max_abs_diff": (ours.float() - theirs.float()).abs().max().item(),
        "shape": list(theirs.shape),
        "dtype": str(theirs.dtype),
        "transformers": transformers.__version__,
    }))


SPLIT_SEED = 0x48454952
HOLDOUT_FRACTION = 0.2


def heirloom_split(counts):
    """The worker's held-out split of a token dataset: per shard, in shard order."""
    torch.manual_seed(SPLIT_SEED)
    train, holdout, first = [], [], 0
    for count in counts:
        order = torch.randperm(count) + first
        held = min(max(math.ceil(count * HOLDOUT_FRACTION), 1), count - 1) if count > 1 else 0
        holdout.append(order[:held])
        train.append(order[held:])
        first += count
    return torch.cat(train), torch.sort(torch.cat(holdout)).values


def heirloom_epoch_order(train, counts, seed, epoch):
    torch.manual_seed(seed ^ (epoch << 32))
    ends = torch.tensor(list(itertools.accumulate(counts)))
    shard_order = torch.randperm(len(counts))
    of_shard = torch.bucketize(train, ends, right=True)
    parts = []
    for shard in shard_order.tolist():
        rows = train[of_shard == shard]
        parts.append(rows[torch.randperm(len(rows))])
    return torch.cat(parts)


def next_token_loss(logits, tokens):
    """Summed next-token cross-entropy in float32, and the number of targets."""
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    targets = tokens[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"), targets.numel()


def train_eager(arch, weights, precision, epochs, batch, lr, threads, *shards):
    torch.set_num_threads(int(threads))
    epochs, batch, lr = int(epochs), int(batch), float(lr)
    cfg, cls, dtype = config(arch)
    model = cls(cfg)
    model.load_state_dict(load_file(weights), strict=False)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model = model.float()
    tokens = torch.cat([load_file(shard)["tokens"].long() for shard in shards])
    counts = [load_file(shard)["tokens"].shape[0] for shard in shards]
    train, holdout = heirloom_split(counts)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    autocast = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0, growth_interval=2000,
                                  enabled=precision == "fp16-mixed")

    def forward(x):
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            return model(x).logits

    losses, seen, started = [], 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = heirloom_epoch_order(train, counts, 0, epoch)
        loss_sum = 0.0
        for first in range(0, len(order), batch):
            rows = order[first:first + batch]
            x = tokens[rows]
            summed, count = next_token_loss(forward(x), x)
            loss = summed / count
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(rows)
            seen += x.numel()
        losses.append(loss_sum / len(order))
    seconds = time.perf_counter() - started
    with torch.no_grad():
        total, count = 0.0, 0
        for first in range(0, len(holdout), batch):
            x = tokens[holdout[first:first + batch]]
            summed, n = next_token_loss(forward(x), x)
            total, count = total + summed.item(), count + n
    print(json.dumps({
        "epoch_losses": losses,
        "final_loss": losses[-1],
        "holdout_loss": total / count,
        "tokens_per_second": seen / seconds,
        "seconds": seconds,
    }))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    arch = json.loads(args[0])
    commands = {"state-dict": state_dict, "make": make, "compare": compare, "train-eager": train_eager}
    commands[command](arch, *args[1:])
