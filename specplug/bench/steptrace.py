"""Summaries of specplug's per-step traces (``specplug bench --step-trace``).

Each engine process running a specplug method writes one row per engine step
(specplug/budgeting.py, TRACE_COLUMNS). The summary looks at full-batch steps only (as many
requests as the largest batch seen), where the controller's choices matter most, and splits a
step's time into what the cost model sees (the engine's work between two drafting calls) and the
adapter's own work (bookkeeping for every request, drafting for the requests that draft), and
the tokens committed per millisecond of those steps (engine step + adapter), which compares a
configuration with the controller and without it on the same steps of one run.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read(trace_dir: Path) -> list[dict]:
    rows = []
    for f in sorted(Path(trace_dir).glob("steps.*.tsv")):
        with open(f) as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                rows.append({k: float(v) for k, v in r.items()})
    return rows


def summarize(rows: list[dict]) -> dict | None:
    """Means over full-batch steps (new-request steps left out: their time includes admission)."""
    if not rows:
        return None
    full = max(r["rows"] for r in rows)
    steps = [r for r in rows if r["rows"] == full and not r["new_requests"] and not math.isnan(r["step_ms"])]
    if not steps:
        return None

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else float("nan")

    plain = [r for r in steps if not r["verified_drafts"]]
    spec = [r for r in steps if r["verified_drafts"]]
    drafting_requests = sum(r["drafting_requests"] for r in steps)
    return {
        "batch": int(full),
        "steps": len(steps),
        "share_verifying": len(spec) / len(steps),
        "plain_step_ms": mean(r["step_ms"] for r in plain),
        "plain_tokens": mean(r["scheduled_tokens"] for r in plain),
        "verify_step_ms": mean(r["step_ms"] for r in spec),
        "verify_tokens": mean(r["scheduled_tokens"] for r in spec),
        "bookkeeping_ms": mean(r["bookkeeping_ms"] for r in steps),
        "drafting_ms": mean(r["drafting_ms"] for r in steps),
        "drafting_ms_per_request": (sum(r["drafting_ms"] for r in steps) / drafting_requests
                                    if drafting_requests else float("nan")),
        "sent_tokens": mean(r["sent_tokens"] for r in steps),
        # traces written before the column existed have no committed tokens
        "tokens_per_ms": (sum(r["committed_tokens"] for r in steps)
                          / sum(r["step_ms"] + r["bookkeeping_ms"] + r["drafting_ms"] for r in steps)
                          if all("committed_tokens" in r for r in steps) else float("nan")),
    }


def markdown(summaries: dict[str, dict | None]) -> str:
    head = ("| config | batch | steps | steps verifying drafts | step ms without drafts (tokens) | "
            "step ms verifying drafts (tokens) | bookkeeping ms/step | drafting ms/step | "
            "drafting ms per drafting request | draft tokens sent/step | tokens committed per ms |")
    lines = [head, "|" + "---|" * 11]
    for label, s in summaries.items():
        if s is None:
            lines.append(f"| {label} | no trace rows |" + " |" * 9)
            continue
        lines.append(
            f"| {label} | {s['batch']} | {s['steps']} | {100 * s['share_verifying']:.0f}% | "
            f"{s['plain_step_ms']:.2f} ({s['plain_tokens']:.0f}) | {s['verify_step_ms']:.2f} ({s['verify_tokens']:.0f}) | "
            f"{s['bookkeeping_ms']:.2f} | {s['drafting_ms']:.2f} | {s['drafting_ms_per_request']:.3f} | "
            f"{s['sent_tokens']:.1f} | {s['tokens_per_ms']:.2f} |")
    return "\n".join(lines)
