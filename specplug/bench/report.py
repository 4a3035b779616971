"""Turn suite results into rows (tau, tok/s, speedup vs no speculation, greedy identity) and a
markdown table. tau = mean tokens per target forward per request = 1 + accepted / drafts,
the definition of vLLM's "Mean acceptance length" and of Spec-Bench; 1.00 without speculation."""

from __future__ import annotations

from specplug.bench.suite import SuiteResult


def _runs(result: dict, phase: str) -> list[dict]:
    """The phase's record from the first run and from every repeat (run_suite(repeats=...))."""
    return [r["phases"][phase] for r in [result, *result.get("repeats", [])] if phase in r["phases"]]


def _tps(ph: dict) -> float:
    return ph["output_tokens"] / ph["elapsed_s"] if ph["elapsed_s"] > 0 else 0.0


def rows(results: list[SuiteResult], baseline_label: str = "no speculation") -> list[dict]:
    """One row per configuration and phase. With repeats: tok/s is the median run (and its
    min-max), the speedup the median of per-round ratios to the baseline of the same round,
    τ and the counts are over all runs, and the identity column is the worst run's."""
    import numpy as np

    base = next((r for r in results if r.variant.label == baseline_label and r.result.get("ok")), None)
    out = []
    for r in results:
        res = r.result
        if not res.get("ok"):
            out.append({"config": r.variant.label, "phase": "-", "error": res.get("error", "failed")})
            continue
        for name, ph in res["phases"].items():
            runs = _runs(res, name)
            tps = [_tps(x) for x in runs]
            drafts = sum(x["num_drafts"] for x in runs)
            accepted = sum(x["num_accepted_tokens"] for x in runs)
            interleaved = bool(res.get("interleaved_rounds"))  # each run: another part of the phase's prompts
            row = {
                "config": r.variant.label,
                "phase": name,
                "concurrency": ph["concurrency"],
                "prompts": sum(x["num_prompts"] for x in runs) if interleaved else ph["num_prompts"],
                "output_tokens": sum(x["output_tokens"] for x in runs) if interleaved else ph["output_tokens"],
                "runs": len(runs),
                "tok_per_s": float(np.median(tps)),
                "tok_per_s_runs": tps,
                "tau": 1.0 + accepted / drafts if drafts else 1.0,
                "drafts": drafts,
                "drafted": sum(x["num_draft_tokens"] for x in runs),
                "accepted": accepted,
                **_latency(runs),
            }
            if base is not None and name in base.result["phases"]:
                bruns = _runs(base.result, name)
                ratios = [t / _tps(b) for t, b in zip(tps, bruns) if _tps(b) > 0]
                row["speedup"] = float(np.median(ratios)) if ratios else float("nan")
                row["speedup_runs"] = ratios
                if interleaved:  # run k against the baseline's run k (the same prompts), all counted
                    wants = [b["outputs"] for b in bruns]
                    same = sum(sum(a == b for a, b in zip(x["outputs"], w)) for x, w in zip(runs, wants))
                    row["identical"] = f"{same}/{sum(len(w) for w in wants)}"
                else:  # every run has the baseline's prompts: the worst run
                    wants = [bruns[0]["outputs"]] * len(runs)
                    same = min(sum(a == b for a, b in zip(x["outputs"], wants[0])) for x in runs)
                    row["identical"] = f"{same}/{len(wants[0])}"
                row["differing"] = _differing(runs, wants, interleaved)
            out.append(row)
    return out


def _differing(runs: list[dict], wants: list[list[list[int]]], interleaved: bool = False) -> list[dict]:
    """Where outputs differ from no speculation's: prompt index (in the phase), run, and the first
    differing output position, so a difference can be traced (a late near-tie vs an early bug)."""
    out = []
    first_prompt = 0  # interleaved: run k holds the phase's prompts after those of runs < k
    for k, (x, want) in enumerate(zip(runs, wants)):
        for i, (a, b) in enumerate(zip(x["outputs"], want)):
            if a != b:
                first = next((j for j, (s, t) in enumerate(zip(a, b)) if s != t), min(len(a), len(b)))
                out.append({"prompt": first_prompt + i, "run": k, "position": first, "lengths": [len(a), len(b)]})
        if interleaved:
            first_prompt += len(want)
    return out


def _latency(runs: list[dict]) -> dict:
    """TTFT and TPOT percentiles (ms) over the requests of all runs, when they were recorded."""
    import numpy as np

    out = {}
    for key in ("ttft_s", "tpot_s"):
        vals = [v for ph in runs for v in ph.get(key, []) if v is not None]
        if vals:
            out[f"{key[:4]}_p50_ms"] = float(np.percentile(vals, 50) * 1e3)
            out[f"{key[:4]}_p90_ms"] = float(np.percentile(vals, 90) * 1e3)
    return out


def _ms(r: dict, key: str) -> str:
    a, b = r.get(f"{key}_p50_ms"), r.get(f"{key}_p90_ms")
    return "–" if a is None else f"{a:.0f} / {b:.0f}"


def _spread(values, fmt: str) -> str:
    """' (min–max)' over repeated runs; nothing for a single run."""
    if not values or len(values) < 2:
        return ""
    return f" ({min(values):{fmt}}–{max(values):{fmt}})"


def markdown(table: list[dict]) -> str:
    head = ("| config | phase | τ (tokens/step) | accepted / drafted | output tok/s | speedup vs no-spec | "
            "TTFT p50 / p90 ms | TPOT p50 / p90 ms | greedy identical to no-spec |")
    lines = [head, "|" + "---|" * 9]
    for r in table:
        if "error" in r:
            lines.append(f"| {r['config']} | – | – | – | – | – | – | – | not run: {r['error']} |")
            continue
        lines.append(
            f"| {r['config']} | {r['phase']} (c={r['concurrency']}, {r['prompts']} prompts) | {r['tau']:.2f} | "
            f"{r['accepted']} / {r['drafted']} | {r['tok_per_s']:.1f}{_spread(r.get('tok_per_s_runs'), '.0f')} | "
            f"{r.get('speedup', float('nan')):.2f}×{_spread(r.get('speedup_runs'), '.2f')} | "
            f"{_ms(r, 'ttft')} | {_ms(r, 'tpot')} | {r.get('identical', '–')} |"
        )
    return "\n".join(lines)


def category_markdown(table: list[dict]) -> str:
    """Per-category phases ("c1 <category>", bench --per-category) pivoted: a row per category, a
    column per configuration, cells "τ / tok/s"; the last row pools every category (τ from the
    summed counts, tok/s as total tokens over total time)."""
    cells: dict[str, dict[str, dict]] = {}
    configs: list[str] = []
    for r in table:
        if "error" in r or not r["phase"].startswith("c1 "):
            continue
        cells.setdefault(r["phase"][3:], {})[r["config"]] = r
        configs.append(r["config"])
    if not cells:
        return ""
    configs = list(dict.fromkeys(configs))
    lines = ["| category | " + " | ".join(configs) + " |", "|" + "---|" * (len(configs) + 1)]
    for cat, by in cells.items():
        lines.append(f"| {cat} | " + " | ".join(
            f"{by[c]['tau']:.2f} / {by[c]['tok_per_s']:.1f}" if c in by else "–" for c in configs) + " |")
    pooled = {r["config"]: r for r in pool_phases(table) if r["concurrency"] == 1}
    lines.append("| **all** | " + " | ".join(
        f"{pooled[c]['tau']:.2f} / {pooled[c]['tok_per_s']:.1f}" if c in pooled else "–" for c in configs) + " |")
    return "\n".join(lines)


def pool_phases(table: list[dict], baseline_label: str = "no speculation") -> list[dict]:
    """One row per (configuration, concurrency): phases at the same concurrency (the per-category
    c=1 phases) merged. τ from the summed counts, tok/s as total tokens over total time, speedup
    against the baseline pooled the same way."""
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        if "error" not in r:
            groups.setdefault((r["config"], r["concurrency"]), []).append(r)
    out = []
    for (config, conc), rs in groups.items():
        secs = sum(r["output_tokens"] / r["tok_per_s"] for r in rs if r["tok_per_s"] > 0)
        drafts = sum(r["drafts"] for r in rs)
        out.append({"config": config, "concurrency": conc, "tok_per_s": sum(r["output_tokens"] for r in rs) / secs
                    if secs else 0.0, "tau": 1 + sum(r["accepted"] for r in rs) / drafts if drafts else 1.0})
    base = {r["concurrency"]: r["tok_per_s"] for r in out if r["config"] == baseline_label}
    for r in out:
        if base.get(r["concurrency"]):
            r["speedup"] = r["tok_per_s"] / base[r["concurrency"]]
    return out
