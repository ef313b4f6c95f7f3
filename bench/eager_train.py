"""The PyTorch-eager peer of `heirloom-train`, and the checks on what it wrote.

  make-data PATH ROWS [FEATURES] writes blobs (x float32 [ROWS, FEATURES=64], y int64, 10 classes)
  eager PATH ARCH_JSON EPOCHS THREADS BATCH
                                trains the same MLP, or ResNet (torchvision's, on 3xHxW
                                rows), the same way in PyTorch eager, prints steps/s
  same-frozen A B PATTERN...    asserts every tensor of A and B not matching a PATTERN is byte-identical
  all-reduce RANK WORLD PORT BYTES,... REPEATS
                                times torch.distributed's all-reduce (gloo) of float buffers,
                                one JSON line per size, as `heirloom-train all-reduce` does

Writes and reads safetensors by hand, so it needs nothing but torch.
"""

import fnmatch
import json
import struct
import sys
import time

import torch


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = t.contiguous().cpu().numpy().tobytes()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def read_raw(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    return {k: body[v["data_offsets"][0] : v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


def make_data(path, rows, features=64):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, features, generator=g)
    y = torch.randint(0, 10, (rows,), generator=g)
    x = centres[y] + 1.2 * torch.randn(rows, features, generator=g)
    write_safetensors(path, {"x": x.float(), "y": y.long()})


def eager(path, arch, epochs, device, batch_size=64):
    raw = read_raw(path)
    y = torch.frombuffer(bytearray(raw["y"]), dtype=torch.int64).to(device)
    x = torch.frombuffer(bytearray(raw["x"]), dtype=torch.float32).reshape(len(y), -1).to(device)
    if "resnet" in arch:
        import torchvision

        r = arch["resnet"]
        build = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[r["depth"]]
        model = build(num_classes=r["num_classes"]).to(device)
        x = x.reshape(-1, r["in_channels"], r["height"], r["width"])
    else:
        widths = [arch["mlp"]["input_features"], *arch["mlp"]["hidden"], arch["mlp"]["num_classes"]]
        layers = []
        for i in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_rows = torch.randperm(len(y), device=device)[len(y) // 5 :]
    steps, start = 0, time.perf_counter()
    for _ in range(epochs):
        order = train_rows[torch.randperm(len(train_rows), device=device)]
        # The same bookkeeping as the worker: loss and hits summed on the device, read per epoch.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            logits = model(x[rows])
            loss = torch.nn.functional.cross_entropy(logits, y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
            correct += (logits.argmax(-1) == y[rows]).sum()
            steps += 1
        loss_sum.item(), correct.item()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"peer": "pytorch-eager", "device": device, "steps": steps, "steps_per_second": steps / seconds}))


def same_frozen(a, b, patterns):
    ta, tb = read_raw(a), read_raw(b)
    frozen = [n for n in ta if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for name in frozen:
        assert ta[name] == tb[name], f"{name} differs"
    changed = [n for n in ta if n not in frozen and ta[n] != tb[n]]
    print(json.dumps({"frozen_identical": frozen, "trained_changed": changed}))


def all_reduce(rank, world, port, sizes, repeats):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for size in sizes:
        data = torch.ones(size // 4)
        dist.all_reduce(data)  # the first pays for connections
        started = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(data)
        seconds = (time.perf_counter() - started) / repeats
        print(json.dumps({"bytes": size, "milliseconds": seconds * 1e3, "gigabytes_per_second": size / seconds / 1e9}))
    dist.destroy_process_group()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "make-data":
        make_data(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 64)
    elif command == "eager":
        torch.set_num_threads(int(sys.argv[5]))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        eager(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), device, int(sys.argv[6]))
    elif command == "same-frozen":
        same_frozen(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif command == "all-reduce":
        torch.set_num_threads(1)
        sizes = [int(size) for size in sys.argv[5].split(",")]
        all_reduce(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sizes, int(sys.argv[6]))
