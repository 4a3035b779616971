"""`specplug trace record`: greedy traces from a real model through vLLM (no speculation), with
the target's top-k at every output position, in the JSONL format `specplug replay` reads:
{"prompt_ids", "output_ids", "category", "topk"}."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("trace", help="record greedy token traces from a model through vLLM")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    r = tsub.add_parser("record", help="run vLLM without speculation and write prompt/output/top-k traces")
    r.add_argument("--model", default="smollm2")
    r.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    r.add_argument("--dataset", default=None, help="Spec-Bench question.jsonl (default: shipped subset)")
    r.add_argument("--num-prompts", type=int, default=32)
    r.add_argument("--max-tokens", type=int, default=256)
    r.add_argument("--topk", type=int, default=8)
    r.add_argument("--out", required=True, help="output .jsonl")
    r.set_defaults(func=run_record)


def run_record(args) -> int:
    from specplug.bench import workload
    from specplug.bench.suite import Variant, run_variant
    from specplug.models.smollm2 import resolve_model

    model_dir = resolve_model(args.model, dtype=args.dtype)
    rows = workload.pick(workload.load_questions(args.dataset), args.num_prompts)
    prompts = workload.chat_prompts(model_dir, rows, 1024)
    req = {"model": model_dir, "dtype": args.dtype, "max_model_len": 2048, "max_tokens": args.max_tokens,
           "prompts": [p.token_ids for p in prompts], "logprobs": args.topk,
           "phases": [{"name": "record", "concurrency": 16}]}
    out = Path(args.out)
    print(f"[specplug] recording {len(prompts)} traces x {args.max_tokens} tokens from {model_dir}", flush=True)
    res = run_variant(Variant("trace", None), req, out.parent / "trace-logs")
    if not res.get("ok"):
        print(f"error: {res.get('error')}")
        return 1
    ph = res["phases"]["record"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for p, o, k in zip(prompts, ph["outputs"], ph["topk"]):
            f.write(json.dumps({"category": p.category, "question_id": p.question_id, "model": "SmolLM2-135M-Instruct",
                                "prompt_ids": p.token_ids, "output_ids": o, "topk": k}) + "\n")
    print(f"[specplug] wrote {len(prompts)} traces to {out}")
    return 0
