"""Turn suite results into rows (tau, tok/s, speedup vs no speculation, greedy identity) and a
markdown table. tau = mean tokens per target forward per request = 1 + accepted / drafts,
the definition of vLLM's "Mean acceptance length" and of Spec-Bench; 1.00 without speculation."""

from __future__ import annotations

from specplug.bench.suite import SuiteResult


def rows(results: list[SuiteResult], baseline_label: str = "no speculation") -> list[dict]:
    base = next((r for r in results if r.variant.label == baseline_label and r.result.get("ok")), None)
    out = []
    for r in results:
        res = r.result
        if not res.get("ok"):
            out.append({"config": r.variant.label, "phase": "-", "error": res.get("error", "failed")})
            continue
        for name, ph in res["phases"].items():
            tps = ph["output_tokens"] / ph["elapsed_s"] if ph["elapsed_s"] > 0 else 0.0
            row = {
                "config": r.variant.label,
                "phase": name,
                "concurrency": ph["concurrency"],
                "prompts": ph["num_prompts"],
                "output_tokens": ph["output_tokens"],
                "tok_per_s": tps,
                "tau": 1.0 + ph["num_accepted_tokens"] / ph["num_drafts"] if ph["num_drafts"] else 1.0,
                "drafted": ph["num_draft_tokens"],
                "accepted": ph["num_accepted_tokens"],
                **_latency(ph),
            }
            if base is not None and name in base.result["phases"]:
                bph = base.result["phases"][name]
                btps = bph["output_tokens"] / bph["elapsed_s"]
                row["speedup"] = tps / btps if btps > 0 else float("nan")
                same = sum(a == b for a, b in zip(ph["outputs"], bph["outputs"]))
                row["identical"] = f"{same}/{len(bph['outputs'])}"
            out.append(row)
    return out


def _latency(ph: dict) -> dict:
    """TTFT and TPOT percentiles (ms) from vLLM's per-request stats, when the run recorded them."""
    import numpy as np

    out = {}
    for key in ("ttft_s", "tpot_s"):
        vals = [v for v in ph.get(key, []) if v is not None]
        if vals:
            out[f"{key[:4]}_p50_ms"] = float(np.percentile(vals, 50) * 1e3)
            out[f"{key[:4]}_p90_ms"] = float(np.percentile(vals, 90) * 1e3)
    return out


def _ms(r: dict, key: str) -> str:
    a, b = r.get(f"{key}_p50_ms"), r.get(f"{key}_p90_ms")
    return "–" if a is None else f"{a:.0f} / {b:.0f}"


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
            f"{r['accepted']} / {r['drafted']} | {r['tok_per_s']:.1f} | {r.get('speedup', float('nan')):.2f}× | "
            f"{_ms(r, 'ttft')} | {_ms(r, 'tpot')} | {r.get('identical', '–')} |"
        )
    return "\n".join(lines)
