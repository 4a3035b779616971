"""SWIFT's skip-set search run offline on the target's own answers, so a skip set for SmolLM2
ships in configs/ and engines start drafting at once (issue 11).

The same search the proposer runs on the fly (specplug/proposers/swift.py: random candidates,
every ``bayes_interval``-th from Bayesian optimisation, matchness = teacher-forced top-1
agreement of the skipped model with the last ``context_window`` tokens), scored here on several
contexts at once (held-out teacher answers) instead of one request's latest window, which makes
the score less noisy. The search runs for a fixed number of candidates.
"""

from __future__ import annotations

from pathlib import Path


def search(model_dir: Path, rows: list[dict], skip_ratio: float, candidates: int, contexts: int = 8,
           context_window: int = 32, seed: int = 0, progress: bool = True) -> dict:
    from tqdm import tqdm

    from specplug.proposers.swift import SwiftOptions, SwiftProposer

    opts = SwiftOptions(target_model=str(model_dir), skip_ratio=skip_ratio, context_window=context_window,
                        max_score=1.0, max_opt_iter=candidates, max_tolerance_iter=candidates, seed=seed)
    prop = SwiftProposer(opts, num_speculative_tokens=8)
    windows = []
    for i, r in enumerate(r for r in rows if len(r["answer"]) >= 2 * context_window + 1):
        if len(windows) == contexts:
            break
        tokens = r["prompt"] + r["answer"][: 2 * context_window + 1]  # score the answer's second window
        windows.append((tokens, prop._full_cache(f"ctx{i}", tokens[:-1])))
    if not windows:
        raise ValueError(f"no teacher answer has {2 * context_window + 1} tokens")
    s = prop.search
    history = []
    for _ in tqdm(range(candidates), desc=f"swift search (skip ratio {skip_ratio})", disable=not progress):
        cand = s.candidate()
        score = sum(prop.matchness(cache, tokens, cand) for tokens, cache in windows) / len(windows)
        s.record(cand, score)
        history.append(score)
        if s.done:
            break
    attention, mlp = prop.skip_layers()
    return {"skip_ratio": skip_ratio, "attention": attention, "mlp": mlp, "matchness": round(s.best, 4),
            "candidates": s.iters, "contexts": len(windows), "context_window": context_window,
            "first_candidate_matchness": round(history[0], 4)}


def estimated_gain(matchness: float, skip_ratio: float, max_draft: int = 8) -> float:
    """Tokens per unit of target time for chain drafting, if each draft token is accepted with
    probability ``matchness`` independently and costs (1 - skip_ratio) of a target forward
    (the verify forward counted as one): E[tokens] / (1 + E[drafted] * (1 - skip_ratio)). A
    ranking of ratios, not a speed prediction: it ignores the CPU's fixed per-step costs and the
    confidence stop."""
    a = matchness
    tokens = sum(a ** i for i in range(max_draft + 1))  # 1 + E[accepted]
    return tokens / (1 + max_draft * (1 - skip_ratio))
