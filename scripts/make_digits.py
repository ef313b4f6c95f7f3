"""Writes the demo's datasets from the 8x8 digits set that scikit-learn ships.

digits-0-4.safetensors holds digits 0-4 with labels 0-4; digits-5-9.safetensors holds
digits 5-9 with labels 0-4 (digit - 5). Each has `x` (float32 [N, 64], pixels / 16) and
`y` (int64 [N]), the format Heirloom datasets use.
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits


def main(out_dir: str) -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for first in (0, 5):
        keep = (y >= first) & (y < first + 5)
        path = out / f"digits-{first}-{first + 4}.safetensors"
        save_file(
            {"x": np.ascontiguousarray(x[keep]), "y": y[keep] - first},
            str(path),
            metadata={"classes": ",".join(str(d) for d in range(first, first + 5))},
        )
        print(f"wrote {path}: {int(keep.sum())} examples")


if __name__ == "__main__":
    main(sys.argv[1])
