"""Trace files: JSONL rows {"prompt_ids": [...], "output_ids": [...], "category": str,
optional "topk": [[k token ids] per output position]} where output_ids is the target's greedy
output and topk[j] the target's top-k at the step that produced output_ids[j]."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass
class Trace:
    prompt_ids: list[int]
    output_ids: list[int]
    category: str = "all"
    topk: list[list[int]] | None = None


def shipped_traces() -> Path:
    return Path(str(resources.files("specplug") / "data" / "traces" / "smollm2_specbench.jsonl"))


def load_traces(path: str | Path | None = None) -> list[Trace]:
    p = Path(path) if path else shipped_traces()
    if not p.is_file():
        raise ValueError(f"traces: file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for key in ("prompt_ids", "output_ids"):
            if key not in row:
                raise ValueError(f"traces: {p}:{n} has no {key!r}")
        topk = row.get("topk")
        if topk is not None and len(topk) != len(row["output_ids"]):
            raise ValueError(f"traces: {p}:{n}: topk has {len(topk)} rows for {len(row['output_ids'])} output tokens")
        out.append(Trace(row["prompt_ids"], row["output_ids"], row.get("category", "all"), topk))
    return out
