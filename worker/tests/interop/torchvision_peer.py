"""PyTorch's side of the interop tests: real torchvision models, nothing downloaded.

  state-dict ARCH_JSON                   prints the model's state-dict keys, shapes, dtypes
  make-resnet WEIGHTS DATA INPUT         a ResNet-18 (random init, batch-norm statistics
                                         warmed up) saved as safetensors, a small dataset,
                                         and an input batch to compare logits on
  compare ARCH_JSON WEIGHTS INPUT LOGITS loads WEIGHTS into torchvision, runs INPUT in eval
                                         mode, prints the max abs difference to LOGITS
  make-script PROGRAM WEIGHTS DATA INPUT a small CNN with batch norm, torch.jit.script-ed and
                                         saved, its named_parameters() as safetensors, data
  compare-script PROGRAM WEIGHTS INPUT LOGITS
                                         loads the program, then WEIGHTS (and a linear
                                         `head` if WEIGHTS has one), compares like `compare`
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


def make_script(program, weights, data, inputs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8))
    model.eval()
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, program)
    save_file({k: v.detach().contiguous() for k, v in scripted.named_parameters()}, weights)
    centres = torch.randn(10, 64)
    y = torch.arange(200) % 10
    x = centres[y] + 0.3 * torch.randn(200, 64)
    save_file({"x": x.float().contiguous(), "y": y.long()}, data)
    save_file({"x": torch.randn(8, 64)}, inputs)


def compare_script(program, weights, inputs, logits):
    model = torch.jit.load(program)
    tensors = load_file(weights)
    head = {k[len("head."):]: tensors.pop(k) for k in list(tensors) if k.startswith("head.")}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected, unexpected
    assert all(".running_" in k or "num_batches" in k for k in missing), missing
    model.eval()
    with torch.no_grad():
        ours = model(load_file(inputs)["x"].reshape(-1, 1, 8, 8))
        if head:
            ours = torch.nn.functional.linear(ours, head["weight"], head["bias"])
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
    elif command == "make-script":
        make_script(*sys.argv[2:6])
    elif command == "compare-script":
        compare_script(*sys.argv[2:6])
    else:
        raise SystemExit(f"unknown command {command}")
