"""Workloads: Spec-Bench-format question files turned into chat-templated prompt token ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass
class Prompt:
    category: str
    question_id: int | str
    token_ids: list[int]


# Named workloads shipped with the package (`--dataset NAME`); anything else is a file path.
SHIPPED = {
    "spec-bench": "spec_bench_subset.jsonl",  # Spec-Bench subset, permissive sources (data/NOTICE.md)
    "repetitive": "repetitive_tasks.jsonl",  # copy-heavy code edits / rewrites written for specplug
}


# Built on the fly: the held-out files of the zoo models' corpus (specplug/zoo/corpus.py), as
# code-completion prompts (the trained zoo target is a code model without a chat template).
STDLIB_HELD_OUT = "stdlib-held-out"
STDLIB_PROMPT_CHARS = 1200


def stdlib_held_out_rows() -> list[dict]:
    from specplug.zoo import corpus

    return [{"question_id": f.relpath, "category": "code", "turns": [f.text[:STDLIB_PROMPT_CHARS]]}
            for f in corpus.split(corpus.corpus_files())[1] if len(f.text) >= STDLIB_PROMPT_CHARS]


def shipped_dataset(name: str = "spec-bench") -> Path:
    return Path(str(resources.files("specplug") / "data" / SHIPPED[name]))


def load_questions(path: str | Path | None = None) -> list[dict]:
    """Spec-Bench `question.jsonl` rows ({question_id, category, turns}); the shipped subset by default."""
    if str(path) == STDLIB_HELD_OUT:
        return stdlib_held_out_rows()
    p = shipped_dataset(str(path or "spec-bench")) if str(path or "spec-bench") in SHIPPED else Path(path)
    if not p.is_file():
        raise ValueError(f"dataset: file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "turns" not in row or not row["turns"]:
            raise ValueError(f"dataset: {p}:{n} has no 'turns' (expected Spec-Bench question.jsonl rows)")
        rows.append(row)
    return rows


def pick(rows: list[dict], num: int, categories: list[str] | None = None) -> list[dict]:
    """Spread ``num`` questions evenly over categories (round-robin, file order within each)."""
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        if categories and r["category"] not in categories:
            continue
        by_cat.setdefault(r["category"], []).append(r)
    if categories:
        missing = sorted(set(categories) - set(by_cat))
        if missing:
            raise ValueError(f"categories: not in the dataset: {', '.join(missing)}")
    out, i = [], 0
    while len(out) < num and any(i < len(v) for v in by_cat.values()):
        for v in by_cat.values():
            if i < len(v) and len(out) < num:
                out.append(v[i])
        i += 1
    return out


def chat_prompts(model_dir: str, rows: list[dict], max_prompt_tokens: int) -> list[Prompt]:
    """First turn of each question through the model's chat template (plain text if it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for r in rows:
        text = r["turns"][0]
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tok(text)["input_ids"]
        out.append(Prompt(r["category"], r["question_id"], list(ids)[-max_prompt_tokens:]))
    return out


def output_lengths(num: int, max_tokens: int, spread: float, seed: int = 0) -> list[int] | None:
    """Each request's ``max_tokens``: drawn once per prompt index, uniformly from
    max_tokens * [1 - spread, 1 + spread] (the same lengths for every configuration of a run),
    or None for ``spread`` 0 (every request ``max_tokens``).

    Why: with equal lengths every request of a no-speculation run finishes on the same step, and
    the closed loop admits the next ones together, in one prefill step; speculation's requests
    finish one by one, and each admission is a step of its own (about 20 ms against a 3.5 ms
    decode step for the tiny model at c=16, docs/benchmarks.md §3). Real traffic is not
    synchronised like that, so a benchmark that is should not decide the comparison."""
    if not 0.0 <= spread < 1.0:
        raise ValueError(f"--max-tokens-spread: expected a fraction in [0, 1), got {spread}")
    if spread == 0.0:
        return None
    import numpy as np

    u = np.random.default_rng(seed).random(num)
    return [max(1, int(round(max_tokens * (1.0 + spread * (2.0 * x - 1.0))))) for x in u]
