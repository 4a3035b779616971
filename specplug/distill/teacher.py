"""The target's greedy answers to the distillation prompts, generated with vLLM (the engine the
drafters will serve in, so the answers are exactly what the target says there).

Run as a module (vLLM spawns its engine; it needs a ``__main__`` guard):
``python -m specplug.distill.teacher MODEL_DIR OUT.jsonl --num N --max-tokens T``.
Each line: {"prompt": [ids], "answer": [ids]}. Answers are written in chunks, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def generate(model_dir: str, out: Path, num: int, max_tokens: int, seed: int = 0, chunk: int = 64) -> Path:
    from specplug.bench.engine_run import cpu_engine_env
    from specplug.bench.workload import chat_prompts
    from specplug.distill.prompts import distill_prompts

    done = sum(1 for _ in open(out)) if out.is_file() else 0
    if done >= num:  # complete: neither the prompts nor vLLM are needed
        return out
    for k, v in cpu_engine_env().items():
        os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams

    rows = [{"category": "distill", "question_id": i, "turns": [p]} for i, p in enumerate(distill_prompts(num, seed))]
    prompts = [p.token_ids for p in chat_prompts(model_dir, rows, max_prompt_tokens=512)]
    llm = LLM(model=model_dir, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0, max_num_seqs=64)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    for start in range(done, num, chunk):
        batch = prompts[start:start + chunk]
        results = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=True)
        with open(out, "a") as f:
            for p, r in zip(batch, results):
                f.write(json.dumps({"prompt": p, "answer": list(r.outputs[0].token_ids)}) + "\n")
        print(f"[specplug] teacher answers: {min(start + chunk, num)}/{num}", flush=True)
    return out


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("out", type=Path)
    ap.add_argument("--num", type=int, default=768)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    generate(a.model_dir, a.out, a.num, a.max_tokens, a.seed)
