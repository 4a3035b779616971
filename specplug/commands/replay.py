"""`specplug replay`: tau of specplug proposers and vLLM's own ngram/suffix on token traces."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="replay greedy token traces through drafters (no target model needed)")
    p.add_argument("--traces", default=None, help="JSONL traces (default: shipped SmolLM2 Spec-Bench traces)")
    p.add_argument("--k", type=int, default=16, help="draft budget per step: chain length / tree nodes")
    p.add_argument("--methods", nargs="*", default=None,
                   help="subset of: suffix-tree suffix-path recycling rasd vllm-ngram vllm-suffix")
    p.add_argument("--config", action="append", default=[], help="also replay this specplug YAML (repeatable)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--cache-stress", type=int, default=0, metavar="N",
                   help="instead: push N synthetic requests through suffix's global cache and report its size vs cap")
    p.add_argument("--cache-bytes", type=int, default=8_000_000, help="byte cap used by --cache-stress")
    p.set_defaults(func=run)


def _specplug_drafters(names, k):
    from specplug.config import SpecplugConfig
    from specplug.proposers import available_methods
    from specplug.replay.drafters import SpecplugDrafter

    table = {
        "suffix-tree": ("suffix", {"mode": "tree"}, True),
        "suffix-path": ("suffix", {"mode": "path"}, False),
        "recycling": ("recycling", {}, True),
        "rasd": ("rasd", {}, True),
    }
    out = []
    for name, (method, opts, tree) in table.items():
        if names and name not in names:
            continue
        if method not in available_methods():
            continue
        cfg = SpecplugConfig(method=method, num_speculative_tokens=k, tree=tree, **{method: opts})
        out.append(SpecplugDrafter(f"specplug {name}", cfg.build_proposer(), tree))
    return out


def run(args) -> int:
    from tqdm import tqdm

    from specplug.replay.drafters import vllm_baselines
    from specplug.replay.simulate import replay
    from specplug.replay.traces import load_traces

    if args.cache_stress:
        return _cache_stress(args)
    traces = load_traces(args.traces)
    drafters = _specplug_drafters(args.methods, args.k)
    from pathlib import Path

    from specplug.config import SpecplugConfig
    from specplug.replay.drafters import SpecplugDrafter

    for path in args.config:
        cfg = SpecplugConfig.from_yaml(path)
        drafters.append(SpecplugDrafter(f"specplug {Path(path).name}", cfg.build_proposer(), cfg.tree))
    base, missing = vllm_baselines()
    drafters += [d for d in base if not args.methods or d.label.replace(" ", "-") in args.methods]
    results = []
    with tqdm(total=len(traces) * len(drafters), desc="replay", unit="trace") as bar:
        for d in drafters:
            bar.set_postfix_str(d.label)
            results.append(replay(d, traces, args.k, bar))
    cats = sorted({t.category for t in traces})
    print(f"\n{len(traces)} traces, {sum(len(t.output_ids) for t in traces)} output tokens, k={args.k}")
    head = (f"| drafter | τ all | draft nodes/step | drafter µs/step | bookkeeping µs/token | "
            + " | ".join(f"τ {c}" for c in cats) + " |")
    print(head)
    print("|" + "---|" * (5 + len(cats)))
    for r in results:
        o = r.overall
        row = [r.label, f"{o.tau:.2f}", f"{o.draft_nodes / o.steps:.1f}", f"{o.draft_seconds / o.steps * 1e6:.0f}",
               f"{o.bookkeeping_seconds / o.tokens * 1e6:.1f}"]
        row += [f"{r.by_category[c].tau:.2f}" for c in cats]
        print("| " + " | ".join(row) + " |")
    for m in missing:
        print(f"not run: {m}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({r.label: {"tau": r.overall.tau, "steps": r.overall.steps, "tokens": r.overall.tokens,
                                 "draft_nodes_per_step": r.overall.draft_nodes / r.overall.steps,
                                 "drafter_us_per_step": r.overall.draft_seconds / r.overall.steps * 1e6,
                                 "bookkeeping_us_per_token": r.overall.bookkeeping_seconds / r.overall.tokens * 1e6,
                                 "tau_by_category": {c: r.by_category[c].tau for c in cats}} for r in results},
                      f, indent=2)
    return 0


def _cache_stress(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from specplug.proposers.suffix import SuffixOptions, SuffixProposer

    prop = SuffixProposer(SuffixOptions(max_cached_requests=10000, max_cache_bytes=args.cache_bytes), 16)
    rng = np.random.default_rng(0)
    peak = 0
    for i in tqdm(range(args.cache_stress), desc="requests", unit="req"):
        prop.start(str(i), rng.integers(0, 5000, size=32).tolist())
        prop.observe(str(i), rng.integers(0, 5000, size=int(rng.integers(16, 128))).tolist())
        prop.stop(str(i))
        peak = max(peak, prop.global_cache_stats()["approx_bytes"])
    s = prop.global_cache_stats()
    print(f"{args.cache_stress} requests through the global suffix cache (cap {args.cache_bytes} bytes, "
          f"10000 requests): peak {peak} bytes, final {s['approx_bytes']} bytes, "
          f"{s['cached_requests']} requests cached, {s['nodes']} nodes -> {'UNDER' if peak <= args.cache_bytes else 'OVER'} cap")
    return 0 if peak <= args.cache_bytes else 1
