"""Side-by-side runs: no speculation, vLLM's own ngram/suffix, and specplug methods, on the
same prompts in one invocation, each configuration in its own engine process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from specplug.bench.engine_run import cpu_engine_env
from specplug.bench import memory


@dataclass
class Variant:
    label: str
    speculative_config: dict | None
    skip_reason: str | None = None  # shown in the table instead of numbers
    endpoint: str | None = None  # a running server to query instead of starting an engine
    engine_args: dict = field(default_factory=dict)  # extra LLM(...) arguments, e.g. async_scheduling
    env: dict = field(default_factory=dict)  # extra environment of the engine process


def sync_baseline() -> Variant:
    """No speculation with vLLM's async scheduling off: the scheduling mode every CPU-side
    drafter (vLLM ngram/suffix, custom_class) forces, so the cost of that mode alone is visible."""
    return Variant("no speculation (sync scheduling)", None, engine_args={"async_scheduling": False})


@dataclass
class SuiteResult:
    variant: Variant
    result: dict = field(default_factory=dict)


def vllm_builtin_variants(k: int = 4, suffix_tokens: int = 16) -> list[Variant]:
    """The engine's own model-free methods, with vLLM's documented defaults."""
    out = [Variant("vllm ngram", {"method": "ngram", "num_speculative_tokens": k,
                                  "prompt_lookup_max": 4, "prompt_lookup_min": 2})]
    suffix = Variant("vllm suffix", {"method": "suffix", "num_speculative_tokens": suffix_tokens})
    if importlib.util.find_spec("arctic_inference") is None:
        suffix.skip_reason = "needs arctic-inference (pip install arctic-inference; sdist, C++ build)"
    out.append(suffix)
    return out


def vllm_draft_model_variant(draft_folder: str, k: int) -> Variant:
    """vLLM's own draft-model speculation (the baseline of specplug dyspec, same draft model)."""
    return Variant("vllm draft_model", {"method": "draft_model", "model": draft_folder, "num_speculative_tokens": k})


def specplug_variants(config_paths: list[str | Path]) -> list[Variant]:
    from specplug.config import SpecplugConfig

    out = []
    for p in config_paths:
        cfg = SpecplugConfig.from_yaml(p)
        tags = [t for t, on in (("tree", cfg.tree), ("no controller", cfg.controller == "off")) if on]
        out.append(Variant(f"specplug {cfg.method}" + (f" ({', '.join(tags)})" if tags else ""), cfg.to_vllm()))
    return out


def _controller_off(v: Variant) -> Variant | None:
    """``v`` with the goodput controller off, or None if it is not a specplug config or is off already."""
    from specplug.config import VLLM_PAYLOAD_KEY

    payload = (v.speculative_config or {}).get(VLLM_PAYLOAD_KEY)
    if not payload or payload.get("controller") == "off":
        return None
    spec = dict(v.speculative_config, **{VLLM_PAYLOAD_KEY: dict(payload, controller="off")})
    label = v.label[:-1] + ", no controller)" if v.label.endswith(")") else v.label + " (no controller)"
    return Variant(label, spec)


def without_controller(variants: list[Variant]) -> list[Variant]:
    """The same specplug configs with the goodput controller off (the ablation)."""
    return [off for off in map(_controller_off, variants) if off is not None]


def all_controller_off(variants: list[Variant]) -> list[Variant]:
    """Every config with the controller off instead of as configured (``--controller-off``)."""
    return [_controller_off(v) or v for v in variants]


def without_plain_steps(variants: list[Variant]) -> list[Variant]:
    """The same specplug configs with vLLM patch 8 off (SPECPLUG_PLAIN_STEPS=0): steps without
    drafts take vLLM's verify path (spec-decode metadata, rejection sampler) as stock vLLM does."""
    from specplug.config import VLLM_PAYLOAD_KEY

    return [Variant(v.label + " (verify path on empty steps)", v.speculative_config,
                    engine_args=v.engine_args, env=dict(v.env, SPECPLUG_PLAIN_STEPS="0"))
            for v in variants if VLLM_PAYLOAD_KEY in (v.speculative_config or {})]


def best_path_only(variants: list[Variant]) -> list[Variant]:
    """The tree: true specplug configs again with tree: false, so τ with whole trees and with
    their best path come from the same run (the tree ablation)."""
    from specplug.config import VLLM_PAYLOAD_KEY

    out = []
    for v in variants:
        payload = (v.speculative_config or {}).get(VLLM_PAYLOAD_KEY)
        if not payload or not payload.get("tree"):
            continue
        spec = dict(v.speculative_config, **{VLLM_PAYLOAD_KEY: dict(payload, tree=False)})
        out.append(Variant(v.label.replace("(tree", "(best path"), spec))
    return out


def slug(label: str) -> str:
    return label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")


def run_variant(variant: Variant, base_request: dict, log_dir: Path, step_trace: bool = False) -> dict:
    """One engine process; returns its JSON result (or an error record). ``step_trace``: the
    specplug adapter writes a per-step trace under ``log_dir/steps/<config>/``."""
    if variant.skip_reason:
        return {"ok": False, "skipped": True, "error": variant.skip_reason}
    if variant.endpoint:
        from specplug.bench import endpoint_run

        try:
            return endpoint_run.run(variant.endpoint, base_request)
        except Exception as e:  # reported in the table; the other endpoints still run
            return {"ok": False, "error": f"{variant.endpoint}: {type(e).__name__}: {e}"}
    log_dir.mkdir(parents=True, exist_ok=True)
    name = slug(variant.label)
    req = dict(base_request, speculative_config=variant.speculative_config, engine_args=variant.engine_args)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "req.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(req))
        env = {**os.environ, **cpu_engine_env(), **variant.env}
        if step_trace:
            env["SPECPLUG_STEP_TRACE"] = str(log_dir / "steps" / name)
        with open(log_dir / f"{name}.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "specplug.bench.engine_run", str(src), str(dst)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
        if dst.exists():
            res = json.loads(dst.read_text())
        else:
            res = {"ok": False, "error": f"engine process exited with {proc.returncode} and wrote no result"}
    if not res.get("ok"):
        res["error"] = f"{res.get('error')} (log: {log_dir / (name + '.log')})"
    return res


def run_suite(variants: list[Variant], base_request: dict, log_dir: Path, repeats: int = 1,
              step_trace: bool = False) -> list[SuiteResult]:
    """Every variant ``repeats`` times, round-robin, the order reversed on every other round:
    a slow drift of the machine's speed then hits every configuration alike instead of the ones
    that happen to run last. Repeats after the first are kept in ``result["repeats"]``."""
    from tqdm import tqdm

    results = {id(v): SuiteResult(v) for v in variants}
    plan = [v for r in range(repeats) for v in (variants if r % 2 == 0 else variants[::-1])]
    bar = tqdm(plan, desc="configurations", unit="cfg")
    for i, v in enumerate(bar):
        bar.set_postfix_str(v.label + (f" (round {i // len(variants) + 1}/{repeats})" if repeats > 1 else ""))
        res = run_variant(v, base_request, log_dir, step_trace)
        sr = results[id(v)]
        if not sr.result:
            sr.result = res
        elif sr.result.get("ok") and res.get("ok"):
            sr.result.setdefault("repeats", []).append(res)
        elif not res.get("ok"):  # a failed repeat fails the configuration: no silent partial numbers
            sr.result = res
    return [results[id(v)] for v in variants]


def split_phases(phases: list[dict], rounds: int, num_prompts: int) -> list[list[dict]]:
    """Each phase's prompts cut into ``rounds`` consecutive parts: round r runs part r of every
    phase. A phase with fewer prompts than rounds is refused (a part would be empty)."""
    out = [[] for _ in range(rounds)]
    for ph in phases:
        start = ph.get("offset", 0)
        n = ph.get("num", num_prompts - start)
        if n < rounds:
            raise ValueError(f"--interleave {rounds}: phase {ph['name']!r} has only {n} prompts")
        cuts = [start + n * r // rounds for r in range(rounds + 1)]
        for r in range(rounds):
            out[r].append(dict(ph, offset=cuts[r], num=cuts[r + 1] - cuts[r]))
    return out


class _ServedEngine:
    """One configuration's engine kept up for the whole run (engine_run --serve)."""

    def __init__(self, variant: Variant, base_request: dict, log_dir: Path, tmp: Path, step_trace: bool):
        self.name = slug(variant.label)
        self.tmp, self.log_path = tmp, log_dir / f"{self.name}.log"
        req = dict(base_request, speculative_config=variant.speculative_config, engine_args=variant.engine_args)
        self.src = tmp / f"{self.name}.json"
        self.src.write_text(json.dumps(req))
        # every engine of the run is up at once: a smaller KV cache each (the tiny and 135M models
        # need far less than 1 GiB at concurrency 16)
        env = {**os.environ, **cpu_engine_env(), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               **variant.env}
        if step_trace:
            env["SPECPLUG_STEP_TRACE"] = str(log_dir / "steps" / self.name)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "specplug.bench.engine_run", "--serve", str(self.src)],
                                     stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     text=True)
        self.calls = 0

    def _wait(self, path: Path) -> dict:
        import time

        while not path.exists():
            if self.proc.poll() is not None:
                return {"ok": False, "error": f"engine process exited with {self.proc.returncode} (log: {self.log_path})"}
            time.sleep(0.05)
        res = json.loads(path.read_text())
        if not res.get("ok"):
            res["error"] = f"{res.get('error')} (log: {self.log_path})"
        return res

    def ready(self) -> dict:
        return self._wait(Path(str(self.src) + ".ready"))

    def run(self, phases: list[dict]) -> dict:
        self.calls += 1
        out = self.tmp / f"{self.name}.{self.calls}.out.json"
        self.proc.stdin.write(json.dumps({"phases": phases, "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        return self._wait(out)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def run_suite_interleaved(variants: list[Variant], base_request: dict, log_dir: Path, rounds: int,
                          step_trace: bool = False, settle_s: float = 0.3) -> list[SuiteResult]:
    """Every configuration's engine up at once; each phase cut into ``rounds`` parts, and round r
    runs part r of every phase on every configuration in turn (order reversed every other round).

    Why: on a shared VM the machine's speed drifts by 10-30% over minutes. Run one after another
    (run_suite), a configuration and the baseline it is compared with are minutes apart; here
    they are seconds apart, every round, and a round's ratio compares the same prompts. Engines
    start once (not once per round), so more rounds cost little. ``settle_s``: a pause between
    configurations, so the last one's OpenMP threads have stopped spinning before the next starts."""
    import time

    from tqdm import tqdm

    log_dir.mkdir(parents=True, exist_ok=True)
    parts = split_phases(base_request["phases"], rounds, len(base_request["prompts"]))
    results = {id(v): SuiteResult(v) for v in variants}
    for v in variants:
        if v.skip_reason:
            results[id(v)].result = {"ok": False, "skipped": True, "error": v.skip_reason}
        elif v.endpoint:
            raise ValueError("--interleave runs engines it starts itself; endpoints (--endpoint) run without it")
    live = [v for v in variants if not v.skip_reason]
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        try:
            before = memory.available_bytes()
            for i, v in enumerate(tqdm(live, desc="starting engines", unit="engine")):
                engines[id(v)] = _ServedEngine(v, base_request, log_dir, Path(tmp), step_trace)
                res = engines[id(v)].ready()  # one at a time: starts compete for the 2 cores otherwise
                if not res.get("ok"):
                    results[id(v)].result = res
                elif i == 0:  # will the others fit beside it? (bench/memory.py)
                    problem = memory.shortfall(before, memory.available_bytes(), len(live) - 1)
                    if problem:
                        raise ValueError(problem)
            plan = [(r, v) for r in range(rounds) for v in (live if r % 2 == 0 else live[::-1])]
            bar = tqdm(plan, desc="rounds x configurations", unit="cfg")
            for r, v in bar:
                sr = results[id(v)]
                if sr.result and not sr.result.get("ok"):
                    continue  # failed to start, or failed a round: no partial numbers
                bar.set_postfix_str(f"{v.label} (round {r + 1}/{rounds})")
                time.sleep(settle_s)
                res = engines[id(v)].run(parts[r])
                if not res.get("ok"):
                    sr.result = res
                elif not sr.result:
                    sr.result = dict(res, interleaved_rounds=rounds)
                else:
                    sr.result.setdefault("repeats", []).append(res)
        finally:
            for e in engines.values():
                e.close()
    return [results[id(v)] for v in variants]
