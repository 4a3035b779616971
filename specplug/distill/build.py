"""`specplug models distill smollm2-draft|smollm2-dllm`: teacher answers (vLLM, resumable), then training,
then the shipped layers written to specplug/distill/weights/ (``--install``) or ``--out``.
`specplug models swift-search smollm2`: SWIFT's skip-set search on held-out teacher answers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from specplug.distill import block_drafter, draft_decoder
from specplug.distill.draft_decoder import DistillRecipe
from specplug.distill.shipped import DLLM_DRAFTERS
from specplug.distill.teacher import load
from specplug.models.smollm2 import build_smollm2, cache_root


def teacher_answers(target: Path, num_prompts: int, max_tokens: int) -> list[dict]:
    answers = cache_root() / "distill" / f"smollm2-answers-{num_prompts}x{max_tokens}.jsonl"
    # vLLM in its own process: its engine must not share this one's threads with training.
    subprocess.run([sys.executable, "-m", "specplug.distill.teacher", str(target), str(answers),
                    "--num", str(num_prompts), "--max-tokens", str(max_tokens)], check=True)
    return load(answers)


def distill(name: str, num_prompts: int, max_tokens: int, epochs: int | None, out: Path | None) -> Path:
    """Train ``name`` (smollm2-draft: the draft decoder; smollm2-dllm: the block-diffusion
    drafter) on the teacher answers; ``epochs`` None keeps the recipe's."""
    target = build_smollm2("float32")
    rows = teacher_answers(target, num_prompts, max_tokens)
    kind = block_drafter if name in DLLM_DRAFTERS else draft_decoder
    recipe = (block_drafter.DllmRecipe if kind is block_drafter else DistillRecipe)(name=name)
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    draft, report = kind.train(target, rows, recipe)
    report["teacher"] = {"prompts": num_prompts, "max_tokens": max_tokens, "target": target.name,
                         "engine": "vllm (fp32, greedy)"}
    dest = out or (cache_root() / "distill" / name)
    kind.save_shipped(draft, report, dest)
    score = report.get("held_out_top1_agreement") or report.get("held_out_block_acceptance")
    print(f"[specplug] {name}: held-out {score}, {report['training_seconds']:.0f} s of training; layers in {dest}",
          flush=True)
    return dest


def swift_search(skip_ratios: list[float], candidates: int, num_prompts: int, max_tokens: int,
                 install: bool) -> dict:
    """Search a skip set per ratio on held-out teacher answers; keep the one with the best
    estimated draft gain, and with ``install`` write it where bench and configs read it."""
    import json

    from specplug.distill import swift_search as ss
    from specplug.distill.shipped import SHIPPED

    target = build_smollm2("float32")
    rows = teacher_answers(target, num_prompts, max_tokens)[-DistillRecipe().held_out:]
    results = [ss.search(target, rows, r, candidates) for r in skip_ratios]
    for r in results:
        r["estimated_gain"] = ss.estimated_gain(r["matchness"], r["skip_ratio"])
        print(f"[specplug] skip ratio {r['skip_ratio']}: matchness {r['matchness']} after {r['candidates']} "
              f"candidates, estimated gain {r['estimated_gain']:.2f}; attention {r['attention']}, mlp {r['mlp']}")
    best = max(results, key=lambda r: r["estimated_gain"])
    out = {**best, "model": "smollm2 (SmolLM2-135M-Instruct, float32)", "searched": results}
    if install:
        (SHIPPED / "smollm2-swift.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"[specplug] wrote {SHIPPED / 'smollm2-swift.json'}")
    return out
