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
"""

import json
import os
import shutil
import sys
import tempfile

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


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    arch = json.loads(args[0])
    {"state-dict": state_dict, "make": make, "compare": compare}[command](arch, *args[1:])
