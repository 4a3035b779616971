"""Will every engine of an interleaved run fit in memory? (``--interleave`` keeps them all up.)

On the 24 GiB VM, nine tiny-model engines up at once (three specplug configurations with and
without the controller, the baseline, vLLM's ngram and suffix) ran out of memory in the first
round: the kernel's OOM killer ended two of their workers, and the run lost both columns after
minutes of starting engines (docs/benchmarks.md §3). Each engine took ~2.8 GiB once up and warm
(resident: its worker 2.2 GiB, the engine core and the driving process 0.7 GiB each, partly
shared). So once the first engine is up, the run measures what it took (the fall in
MemAvailable) and stops, with what to change, if the rest will not fit.
"""

from __future__ import annotations

GIB = 1 << 30
# an engine's memory grows a little in the rounds (buffers of new shapes): six engines used
# 18.1 GiB at the peak of the rounds, 2.9 GiB each beside a first engine measured at 2.8
GROWTH = 1.05
RESERVE = GIB // 2  # for the driving process, the page cache and the plots


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none: the check is skipped)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def shortfall(before: int | None, after_first: int | None, remaining: int) -> str | None:
    """Why ``remaining`` more engines like the first will not fit, or None if they will.
    ``before``/``after_first``: available bytes before the first engine started and once it was up."""
    if before is None or after_first is None or remaining <= 0:
        return None
    per_engine = max(before - after_first, 0) * GROWTH
    need = remaining * per_engine + RESERVE
    if need <= after_first:
        return None
    fits = int(max(after_first - RESERVE, 0) // per_engine) + 1 if per_engine > 0 else remaining + 1
    return (f"--interleave keeps every engine up at once: the first took {per_engine / GROWTH / GIB:.1f} GiB, "
            f"the other {remaining} need ~{need / GIB:.1f} GiB with {after_first / GIB:.1f} GiB available, "
            f"room for ~{fits} engines in all. Run fewer configurations (--no-builtin drops vLLM's ngram/suffix "
            f"engines, leaving out --ablate-controller halves the specplug ones), or without --interleave "
            f"(one engine at a time), or lower VLLM_CPU_KVCACHE_SPACE (GiB of KV cache per engine, 1 by default here)")
