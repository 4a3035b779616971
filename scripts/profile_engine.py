"""Where does a vLLM step's time go, with and without a speculative config? (cProfile, one process)

    python scripts/profile_engine.py none                       # no speculation
    python scripts/profile_engine.py configs/suffix.yaml        # any specplug YAML
    python scripts/profile_engine.py never                      # specplug suffix that never drafts
    python scripts/profile_engine.py configs/rasd.yaml --no-profile --rounds 8   # tokens/s, no profiler

Runs vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) on the tiny fp32
model (``--model zoo-target``: the 8-layer zoo target): 16 (``--requests``) random 60-token
prompts x 128 greedy tokens, one warm-up round, then three profiled
rounds. Prints tokens/s (inflated by the profiler's overhead: compare runs, not absolutes) and
the functions with the most cumulative time. ``never`` asks for a draft for every request every
step and gets none (budget offset -100, controller off): the adapter's own per-request cost.
``idle`` is the same with the goodput controller on: what staying ready costs where drafting
never pays.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="'none', 'never', 'idle' or a specplug YAML")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--model", default="tiny", help="'tiny' (default) or 'zoo-target' (8 layers, needed by swift)")
    p.add_argument("--requests", type=int, default=16, help="requests per round, all in flight (1: c=1)")
    p.add_argument("--out", help="also write the raw profile here (pstats format)")
    p.add_argument("--no-profile", action="store_true",
                   help="time --rounds rounds without the profiler instead (tokens/s per round)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process, so it is profiled

    import numpy as np

    from specplug.bench.suite import cpu_engine_env
    from specplug.config import SpecplugConfig
    from specplug.models.tiny import build_tiny_llama

    for k, v in cpu_engine_env().items():
        if k != "LD_PRELOAD":  # too late to preload here: run under `LD_PRELOAD=.venv/lib/libiomp5.so`
            os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams

    if args.config == "none":
        spec = None
    elif args.config in ("never", "idle"):
        spec = SpecplugConfig.from_dict({"method": "suffix", "num_speculative_tokens": 16,
                                         "controller": "off" if args.config == "never" else "goodput",
                                         "suffix": {"max_spec_factor": 0.0001, "max_spec_offset": -100}}).to_vllm()
    else:
        spec = SpecplugConfig.from_yaml(args.config).to_vllm()
    if args.model == "tiny":
        model, vocab = build_tiny_llama(), 1024
    else:
        from specplug.zoo import zoo_model

        model, vocab = zoo_model(args.model.removeprefix("zoo-")), 4096
    llm = LLM(model=str(model), dtype="float32", max_model_len=2048, enforce_eager=True, seed=0,
              speculative_config=spec, max_num_seqs=64)
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(2, vocab, size=60).tolist()} for _ in range(args.requests)]
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    if args.no_profile:
        rates = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            rates.append(args.requests * 128 / (time.perf_counter() - t0))
        print(f"{args.config}: {np.median(rates):.0f} tok/s median of {args.rounds} rounds "
              f"({', '.join(f'{r:.0f}' for r in rates)})")
        return 0
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(3):
        llm.generate(prompts, params, use_tqdm=False)
    prof.disable()
    seconds = time.perf_counter() - t0
    print(f"{args.config}: {3 * args.requests * 128 / seconds:.0f} tok/s under the profiler")
    if args.out:
        prof.dump_stats(args.out)
    stats = pstats.Stats(prof, stream=sys.stdout)
    rows = sorted(((ct, tt, nc, f"{f.split('site-packages/')[-1]}:{line}:{name}")
                   for (f, line, name), (_, nc, tt, ct, _) in stats.stats.items()), reverse=True)
    print(f"{'cumulative s':>12} {'own s':>8} {'calls':>8}  function")
    for ct, tt, nc, name in rows[: args.top]:
        print(f"{ct:12.2f} {tt:8.2f} {nc:8d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
