"""Writes the demo's two token datasets, made here from two small grammars and tokenised
byte by byte (token = the byte's value + 1, so 0 stays free for padding; vocabulary 257).

sentences-N.safetensors: English-like sentences ("the old cat sees a red ball .").
arithmetic-N.safetensors: sums written out ("12 + 7 = 19 ;").

Each shard holds `tokens` (int32 [sequences, 64]): the text cut at sentence ends into
sequences of at most 64 bytes, padded with 0 at the end.
"""

import random
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

LENGTH = 64
PER_SHARD = 256

ARTICLES = ["the", "a", "one", "every"]
ADJECTIVES = ["old", "red", "small", "quiet", "bright", "green", "tired", "happy"]
NOUNS = ["cat", "dog", "ball", "tree", "bird", "river", "house", "child", "garden"]
VERBS = ["sees", "finds", "likes", "follows", "paints", "hears", "keeps"]


def sentence(rng):
    def phrase():
        words = [rng.choice(ARTICLES)]
        if rng.random() < 0.6:
            words.append(rng.choice(ADJECTIVES))
        words.append(rng.choice(NOUNS))
        return words

    return " ".join(phrase() + [rng.choice(VERBS)] + phrase()) + " ."


def sum_(rng):
    a, b = rng.randrange(100), rng.randrange(100)
    return f"{a} + {b} = {a + b} ;"


def sequences(make, count, rng):
    """`count` sequences of whole units (sentences or sums), as many as fit in LENGTH."""
    rows = []
    while len(rows) < count:
        text = ""
        while True:
            unit = make(rng)
            if len(text) + len(unit) + 1 > LENGTH:
                break
            text += unit + " "
        ids = [byte + 1 for byte in text.strip().encode()]
        rows.append(ids + [0] * (LENGTH - len(ids)))
    return np.array(rows, dtype=np.int32)


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for name, make, shards in (("sentences", sentence, 4), ("arithmetic", sum_, 2)):
        for shard in range(shards):
            path = out / f"{name}-{shard}.safetensors"
            save_file({"tokens": sequences(make, PER_SHARD, rng)}, str(path))
        print(f"wrote {shards} shards of {PER_SHARD} sequences x {LENGTH} tokens: {name}")


if __name__ == "__main__":
    main(sys.argv[1])
