"""Run the benchmark phases against a running OpenAI-compatible vLLM server (`vllm serve`).

Same phases and result format as ``engine_run`` (so the report treats both alike): requests are
sent with ``concurrency`` requests in flight (a new one starts when one finishes) through the completions API with token-id prompts, streamed so
TTFT and TPOT are measured at the client, and vLLM's spec-decode counters are read from
``/metrics`` before and after each phase.
"""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

COUNTERS = {
    "vllm:spec_decode_num_drafts_total": "num_drafts",
    "vllm:spec_decode_num_draft_tokens_total": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens_total": "num_accepted_tokens",
}


def _metrics(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {v: 0 for v in COUNTERS.values()}
    for name, key in COUNTERS.items():
        for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M):
            out[key] += int(float(m.group(1)))
    return out


def _one_request(client, model: str, prompt: list[int], max_tokens: int) -> tuple[list[int], float, float | None]:
    t0 = time.perf_counter()
    first = last = None
    tokens: list[int] = []
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                       stream=True, extra_body={"return_token_ids": True})
    for chunk in stream:
        for choice in chunk.choices:
            ids = getattr(choice, "token_ids", None) or []
            if ids:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                tokens.extend(int(t) for t in ids)
    ttft = (first - t0) if first is not None else float("nan")
    tpot = (last - first) / (len(tokens) - 1) if len(tokens) > 1 else None
    return tokens, ttft, tpot


def run(base_url: str, req: dict) -> dict:
    from openai import OpenAI

    from specplug.bench.engine_run import max_tokens_for, phase_prompts

    base_url = base_url.rstrip("/")
    client = OpenAI(base_url=f"{base_url}/v1", api_key="none", timeout=600)
    model = client.models.list().data[0].id
    phases = {}
    for phase in req["phases"]:
        prompts = phase_prompts(req, phase)
        conc = phase["concurrency"]
        before = _metrics(base_url)
        results = []
        t = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:  # `conc` requests in flight, as engine_run does
            start = phase.get("offset", 0)
            results = list(pool.map(lambda jp: _one_request(client, model, jp[1], max_tokens_for(req, start + jp[0])),
                                    enumerate(prompts)))
        elapsed = time.perf_counter() - t
        after = _metrics(base_url)
        phases[phase["name"]] = {
            "concurrency": conc,
            "num_prompts": len(prompts),
            "elapsed_s": elapsed,
            "output_tokens": sum(len(r[0]) for r in results),
            "outputs": [r[0] for r in results],
            "ttft_s": [r[1] for r in results],
            "tpot_s": [r[2] for r in results],
            **{k: after[k] - before[k] for k in after},
        }
    return {"ok": True, "endpoint": base_url, "model": model, "phases": phases}
