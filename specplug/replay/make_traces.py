"""Seeded synthetic traces of the repetitive kind where model-free drafting shines, built from
random token ids (no third-party text). Reproduce the shipped file with

    python -m specplug.replay.make_traces specplug/data/traces/synthetic_repetitive.jsonl

- code_edit: the prompt holds a "file"; the output re-emits it with a few local edits (what an
  agent does when it rewrites a file after a small change).
- agentic: a tool-call template with slots; each slot takes one of a few alternative values, so
  the same context is followed by different continuations on different turns (where a tree of
  alternatives beats a single path).
- chat: plain random text with little repetition (the control).
"""

from __future__ import annotations

import json
import sys

import numpy as np

VOCAB = 5000


def _zipf_tokens(rng, n):
    return (rng.zipf(1.3, size=n) % VOCAB).tolist()


def code_edit(rng) -> dict:
    file = _zipf_tokens(rng, int(rng.integers(150, 300)))
    out = list(file)
    for _ in range(int(rng.integers(2, 6))):  # local edits: replace or insert a short span
        i = int(rng.integers(0, len(out) - 5))
        span = _zipf_tokens(rng, int(rng.integers(1, 6)))
        out[i : i + (int(rng.integers(0, 4)))] = span
    prompt = [1, 2, 3] + file + [4, 5]
    return {"category": "code_edit", "prompt_ids": prompt, "output_ids": out[:256]}


def agentic(rng, template, slots) -> dict:
    turns = []
    for _ in range(int(rng.integers(6, 10))):
        turn = []
        for piece in template:
            turn += piece if isinstance(piece, list) else slots[piece][int(rng.integers(0, len(slots[piece])))]
        turns.append(turn)
    history = [t for turn in turns[:3] for t in turn]
    out = [t for turn in turns[3:] for t in turn]
    return {"category": "agentic", "prompt_ids": [1, 2] + history, "output_ids": out[:256]}


def chat(rng) -> dict:
    return {"category": "chat", "prompt_ids": _zipf_tokens(rng, 40), "output_ids": _zipf_tokens(rng, 200)}


def make(seed: int = 0, per_category: int = 16) -> list[dict]:
    rng = np.random.default_rng(seed)
    fixed = [_zipf_tokens(rng, int(rng.integers(3, 8))) for _ in range(5)]
    slots = {f"s{i}": [_zipf_tokens(rng, int(rng.integers(1, 4))) for _ in range(3)] for i in range(4)}
    template = [fixed[0], "s0", fixed[1], "s1", fixed[2], "s2", fixed[3], "s3", fixed[4]]
    rows = [code_edit(rng) for _ in range(per_category)]
    rows += [agentic(rng, template, slots) for _ in range(per_category)]
    rows += [chat(rng) for _ in range(per_category)]
    return rows


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "synthetic_repetitive.jsonl"
    with open(path, "w") as f:
        for row in make():
            f.write(json.dumps(row) + "\n")
    print(f"wrote {path}")
