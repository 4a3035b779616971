"""What the vLLM adapter costs per engine step when speculation is mostly off, without vLLM.

    python scripts/adapter_cost.py                           # configs/suffix.yaml, 16 requests
    python scripts/adapter_cost.py --config configs/rasd.yaml --batch 16 --profile

Drives specplug's real adapter (SpecplugProposer._propose, the goodput controller, the proposer)
with a simulated engine: ``--batch`` requests of 60 random prompt tokens and 128 random output
tokens each, a new request as soon as one finishes, one committed token per request per step.
Random tokens keep acceptance near zero, so the controller keeps drafting mostly off: this is the
cost of *staying ready* (issue 9: at c=16 it decides whether specplug can match no speculation).
Step times fed to the controller come from a simulated clock: 4.5 ms + 0.15 ms per scheduled
token + 1.5 ms when the step verifies drafts. Prints the adapter's mean time per step;
``--profile`` adds the functions with the most own time (cProfile; inflated, compare runs);
``--breakdown`` the wall time per step of the adapter's parts (timers around them, no profiler).
"""

from __future__ import annotations

import argparse
import time
import types

import numpy as np

from specplug.budgeting import BudgetPlanner
from specplug.config import SpecplugConfig
from specplug.engines.vllm.proposer import SpecplugProposer

PROMPT, OUTPUT, MAX_LEN = 60, 128, 4096


def adapter(cfg: SpecplugConfig, clock) -> SpecplugProposer:
    """The worker-side adapter as vLLM would build it, minus vLLM's config object."""
    sp = object.__new__(SpecplugProposer)
    sp.config, sp.proposer, sp.k, sp.max_model_len = cfg, cfg.build_proposer(), cfg.num_speculative_tokens, MAX_LEN
    sp.planner = BudgetPlanner(sp.k, enabled=cfg.controller == "goodput", clock=clock)
    sp._kv_bound, sp._started, sp._failed_once, sp._timing_every = False, set(), False, 0
    sp.pending_trees, sp._requests = {}, None
    return sp


def time_parts(sp: SpecplugProposer) -> dict:
    """Wrap the adapter's parts in timers; returns {part: seconds so far} (nested parts overlap:
    the proposer's stop runs inside the lifecycle sync)."""
    spent: dict = {}

    def timed(obj, name, part):
        inner = getattr(obj, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - t0

        setattr(obj, name, wrapper)

    for name in ("start", "observe", "stop", "propose"):
        timed(sp.proposer, name, f"proposer.{name}")
    for name in ("budgets", "shadow", "committed", "drafted", "step_started", "step_finished"):
        timed(sp.planner, name, f"planner.{name}")
    timed(sp, "_sync_lifecycle", "lifecycle (incl. start, stop)")
    return spent


def run(cfg: SpecplugConfig, batch: int, steps: int, seed: int = 0, breakdown: bool = False):
    rng = np.random.default_rng(seed)
    offset = [0.0]
    sp = adapter(cfg, lambda: time.perf_counter() + offset[0])
    parts = time_parts(sp) if breakdown else {}
    tokens = np.zeros((batch, MAX_LEN), np.int32)
    lengths = np.zeros(batch, np.int64)
    ib = types.SimpleNamespace(req_ids=[None] * batch, num_prompt_tokens=np.zeros(batch, np.int64), greedy_reqs=set())
    counter = iter(range(10**9))

    def admit(row):
        rid, prompt = f"r{next(counter)}", rng.integers(2, 1024, size=PROMPT)
        tokens[row, :PROMPT], lengths[row], ib.num_prompt_tokens[row], ib.req_ids[row] = prompt, PROMPT, PROMPT, rid
        return types.SimpleNamespace(req_id=rid, prompt_token_ids=prompt.tolist())

    def sched(new, finished, scheduled):
        return types.SimpleNamespace(scheduled_new_reqs=new, finished_req_ids=finished,
                                     total_num_scheduled_tokens=scheduled, num_scheduled_tokens={})

    sp.bind_step(ib, sched([admit(r) for r in range(batch)], set(), batch * PROMPT))
    sp._propose([[] for _ in range(batch)], lengths, tokens)  # the prefill step: nothing sampled
    spent, sent_total, sent = 0.0, 0, 0
    for _ in range(steps):
        offset[0] += 0.0045 + 0.00015 * (batch + sent) + (0.0015 if sent else 0.0)  # the engine's step
        finished, new = set(), []
        for row in range(batch):
            if lengths[row] >= PROMPT + OUTPUT:
                finished.add(ib.req_ids[row])
                new.append(admit(row))
        sampled = []
        for row in range(batch):
            t = int(rng.integers(2, 1024))
            tokens[row, lengths[row]] = t
            lengths[row] += 1
            sampled.append([t])
        sp.bind_step(ib, sched(new, finished, batch))
        t0 = time.perf_counter()
        out = sp._propose(sampled, lengths, tokens)
        spent += time.perf_counter() - t0
        sent = sum(map(len, out))
        sent_total += sent
    return spent / steps, sent_total / steps, sp.planner.summary(), {k: v / steps for k, v in parts.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/suffix.yaml")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--breakdown", action="store_true", help="time the adapter's parts (ms per step)")
    args = p.parse_args()
    cfg = SpecplugConfig.from_yaml(args.config)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    per_step, sent, summary, parts = run(cfg, args.batch, args.steps, breakdown=args.breakdown)
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    print(f"{args.config}, {args.batch} requests: adapter {per_step * 1e3:.3f} ms per step, "
          f"{sent:.2f} draft tokens sent per step\ncontroller: {summary}")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {part}: {seconds * 1e3:.3f} ms per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
