"""PyTorch's side of the interop tests: real torchvision models, nothing downloaded.

  state-dict ARCH_JSON                   prints the model's state-dict keys, shapes, dtypes
  make-resnet WEIGHTS DATA INPUT         a ResNet-18 (random init, batch-norm statistics
                                         warmed up) saved as safetensors, a small dataset,
                                         and an input batch to compare logits on
  compare ARCH_JSON WEIGHTS INPUT LOGITS loads WEIGHTS into torchvision, runs INPUT in eval
                                         mode, prints the max abs difference to LOGITS
"""

import json
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file


def build(arch):
    (kind, spec), = arch.items()
    if kind == "resnet":
        model = getattr(torchvision.models, f"resnet{spec['depth']}")(num_classes=spec["num_classes"])
        if spec["in_channels"] != 3:
            model.conv1 = torch.nn.Conv2d(spec["in_channels"], 64, 7, 2, 3, bias=False)
    elif kind == "vgg":
        name = f"vgg{spec['depth']}" + ("_bn" if spec.get("batch_norm") else "")
        model = getattr(torchvision.models, name)(num_classes=spec["num_classes"])
    else:
        raise SystemExit(f"no torchvision peer for {kind}")
    shape = (spec["in_channels"], spec["height"], spec["width"])
    return model, shape


def state_dict(arch):
    model, _ = build(arch)
    print(json.dumps([[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]))


def make_resnet(weights, data, inputs):
    torch.manual_seed(0)
    arch = {"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}
    model, shape = build(arch)
    # Warm the batch-norm statistics up so they are not the defaults.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    centres = torch.randn(10, 3 * 32 * 32)
    y = torch.arange(64) % 10
    x = centres[y] + 0.5 * torch.randn(64, 3 * 32 * 32)
    save_file({"x": x.float().contiguous(), "y": y.long()}, data)
    save_file({"x": torch.randn(8, 3 * 32 * 32)}, inputs)


def compare(arch, weights, inputs, logits):
    model, shape = build(arch)
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    x = load_file(inputs)["x"].reshape(-1, *shape)
    with torch.no_grad():
        ours = model(x)
    theirs = load_file(logits)["logits"]
    print(json.dumps({"max_abs_diff": (ours - theirs).abs().max().item(), "shape": list(theirs.shape)}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    command = sys.argv[1]
    if command == "state-dict":
        state_dict(json.loads(sys.argv[2]))
    elif command == "make-resnet":
        make_resnet(*sys.argv[2:5])
    elif command == "compare":
        compare(json.loads(sys.argv[2]), *sys.argv[3:6])
    else:
        raise SystemExit(f"unknown command {command}")
