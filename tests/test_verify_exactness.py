"""Distribution exactness of the sampling verifiers (chi-square, >= 100k draws).

A toy second-order Markov "target" over a 4-token vocabulary generates 3 tokens after a fixed
prefix. Speculative generation (draft tree -> verify -> append, repeated) must produce the
3-token sequences with exactly the target's joint distribution. Each verifier is tested with
100k draws (p-value > 0.01, fixed seeds so the run is reproducible), and each test has a
control: a deliberately broken verifier fed to the same harness must fail it (p < 1e-6), which
shows the harness can tell.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Callable

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import specplug.verify as V
from specplug.tree import DraftTree

VOCAB = 4
GEN_LEN = 3
PREFIX = (0, 1)
N_DRAWS = 100_000
N_CONTROL = 20_000


class ToyModels:
    """Target logits and draft distribution q as fixed random tables over the last two tokens."""

    def __init__(self, seed: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        rng = np.random.default_rng(seed)
        self.target_logits = torch.tensor(rng.normal(scale=1.2, size=(VOCAB, VOCAB, VOCAB)), dtype=torch.float32)
        self.q = torch.tensor(rng.dirichlet(np.full(VOCAB, 1.5), size=(VOCAB, VOCAB)), dtype=torch.float64)
        self.sampling = (temperature, top_k, top_p)
        self._p = {}

    def p(self, ctx: tuple[int, ...]) -> torch.Tensor:
        key = ctx[-2:]
        if key not in self._p:
            t, k, tp = self.sampling
            self._p[key] = V.target_probs(self.target_logits[key][None], t, k, tp)[0].double()
        return self._p[key]

    def q_of(self, ctx: tuple[int, ...]) -> torch.Tensor:
        return self.q[ctx[-2:]]

    def joint(self) -> dict[tuple[int, ...], float]:
        out = {}
        for seq in itertools.product(range(VOCAB), repeat=GEN_LEN):
            ctx, prob = PREFIX, 1.0
            for tok in seq:
                prob *= float(self.p(ctx)[tok])
                ctx = ctx + (tok,)
            out[seq] = prob
        return out


# ------------------------------------------------------------------ draft tree builders
def deterministic_tree(m: ToyModels, ctx, gen) -> DraftTree:
    """Top-2 children of q at the root, top-2 below the first, top-1 below the second."""
    paths = []
    top = torch.argsort(m.q_of(ctx), descending=True).tolist()
    a, b = top[0], top[1]
    below_a = torch.argsort(m.q_of(ctx + (a,)), descending=True).tolist()[:2]
    below_b = torch.argsort(m.q_of(ctx + (b,)), descending=True).tolist()[0]
    paths += [[a, below_a[0]], [a, below_a[1]], [b, below_b]]
    return DraftTree.from_paths(paths)


def _draw_without_replacement(q: torch.Tensor, k: int, gen) -> list[int]:
    q = q.clone()
    out = []
    for _ in range(k):
        x = int(torch.multinomial(q, 1, generator=gen))
        out.append(x)
        q[x] = 0
    return out


def sampled_chain(m: ToyModels, ctx, gen, length: int = 3) -> DraftTree:
    toks, qs, c = [], [], ctx
    for _ in range(length):
        q = m.q_of(c)
        x = int(torch.multinomial(q, 1, generator=gen))
        toks.append(x)
        qs.append(q.numpy())
        c = c + (x,)
    return DraftTree(toks, np.arange(length) - 1, draft_probs=np.stack(qs), deterministic=False)


def sampled_tree(m: ToyModels, ctx, gen) -> DraftTree:
    """Two children sampled without replacement at the root, two below each."""
    tokens, parents, qs = [], [], []
    for x in _draw_without_replacement(m.q_of(ctx), 2, gen):
        tokens.append(x), parents.append(-1), qs.append(m.q_of(ctx).numpy())
    for parent in (0, 1):
        c = ctx + (tokens[parent],)
        for y in _draw_without_replacement(m.q_of(c), 2, gen):
            tokens.append(y), parents.append(parent), qs.append(m.q_of(c).numpy())
    return DraftTree(tokens, parents, draft_probs=np.stack(qs), deterministic=False)


# ------------------------------------------------------------------ harness
def generate(m: ToyModels, build: Callable, verifier: Callable, n: int, seed: int) -> Counter:
    gen = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    cache: dict = {}  # deterministic builders depend only on the last two tokens
    for _ in range(n):
        ctx = PREFIX
        while len(ctx) - len(PREFIX) < GEN_LEN:
            if ctx[-2:] in cache:
                tree, rows = cache[ctx[-2:]]
            else:
                tree = build(m, ctx, gen)
                rows = [m.p(ctx)] + [m.p(ctx + tuple(int(tree.tokens[a]) for a in tree.path_to(i)))
                                     for i in range(tree.num_nodes)]
                if build is deterministic_tree:
                    cache[ctx[-2:]] = (tree, rows)
            u = torch.rand((tree.num_nodes + 1, 2), generator=gen, dtype=torch.float64)
            res = verifier(tree, rows if isinstance(rows, torch.Tensor) else torch.stack(rows), u)
            ctx = ctx + tuple(res.tokens)
        counts[ctx[len(PREFIX): len(PREFIX) + GEN_LEN]] += 1
    return counts


def chi_square_pvalue(m: ToyModels, counts: Counter) -> float:
    joint = m.joint()
    n = sum(counts.values())
    cells = sorted(joint)
    expected = np.array([joint[c] * n for c in cells])
    observed = np.array([counts.get(c, 0) for c in cells], dtype=float)
    keep = expected >= 5  # pool sparse cells so the chi-square approximation holds
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    exp = exp * (obs.sum() / exp.sum())  # float rounding: scipy wants equal totals
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert observed.sum() == n
    return float(chisquare(obs, exp).pvalue)


# ------------------------------------------------------------------ deliberately broken verifiers
def broken_sample_and_match(tree, probs, uniforms):
    """Classic bug: accept the first child x with probability p(x), else draw from p *without*
    removing the rejected x (correct is: sample y ~ p and descend iff y is a child)."""
    node, accepted = -1, []
    while True:
        p = probs[node + 1]
        kids = [int(c) for c in tree.children(node)]
        if kids and float(uniforms[kids[0] + 1, 0]) < float(p[int(tree.tokens[kids[0]])]):
            accepted.append(kids[0])
            node = kids[0]
            continue
        y = V.sample_from(p, float(uniforms[node + 1, 1]))
        return V.VerifyResult(accepted, [int(tree.tokens[a]) for a in accepted] + [y])


def _with_broken_residual(fn):
    """Run a rejection verifier whose residual is p itself (forgets to subtract q)."""
    def run(tree, probs, uniforms):
        saved = V.residual
        V.residual = lambda p, q: p
        try:
            return fn(tree, probs, uniforms)
        finally:
            V.residual = saved
    return run


def _without_replacement_ignored(tree, probs, uniforms):
    """Treat children drawn without replacement as if drawn with replacement (q never updated)."""
    node, accepted = -1, []
    q_all = torch.as_tensor(tree.draft_probs, dtype=torch.float64)
    while True:
        p = probs[node + 1].double()
        kids = [int(c) for c in tree.children(node)]
        nxt = None
        for c in kids:
            x = int(tree.tokens[c])
            q = q_all[c]
            if float(uniforms[c + 1, 0]) * float(q[x]) < float(p[x]):
                nxt = c
                break
            p = V.residual(p, q)
        if nxt is None:
            y = V.sample_from(p, float(uniforms[node + 1, 1]))
            return V.VerifyResult(accepted, [int(tree.tokens[a]) for a in accepted] + [y])
        accepted.append(nxt)
        node = nxt


CASES = {
    "sample_and_match": (deterministic_tree, V.sample_and_match, broken_sample_and_match),
    "chain_rejection": (sampled_chain, V.chain_rejection, _with_broken_residual(V.chain_rejection)),
    "recursive_rejection": (sampled_tree, V.recursive_rejection, _without_replacement_ignored),
}
SAMPLING = {"t1": (1.0, 0, 1.0), "t0.7_topk3_topp0.9": (0.7, 3, 0.9)}


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("case", list(CASES))
def test_verifier_is_distribution_exact(case, sampling):
    build, verifier, _ = CASES[case]
    m = ToyModels(seed=11, **dict(zip(("temperature", "top_k", "top_p"), SAMPLING[sampling])))
    counts = generate(m, build, verifier, N_DRAWS, seed=1234)
    p = chi_square_pvalue(m, counts)
    assert p > 0.01, f"{case}/{sampling}: chi-square p-value {p:.2e} says the output is not ~ target"


@pytest.mark.parametrize("case", list(CASES))
def test_broken_verifier_fails_the_same_harness(case):
    build, _, broken = CASES[case]
    m = ToyModels(seed=11)
    counts = generate(m, build, broken, N_CONTROL, seed=99)
    p = chi_square_pvalue(m, counts)
    assert p < 1e-6, f"{case}: the harness did not detect a broken verifier (p={p:.3g})"


def test_speculation_actually_happens():
    """Guard against a vacuous pass: the harness must accept draft tokens, not only bonuses."""
    m = ToyModels(seed=11)
    gen = torch.Generator().manual_seed(0)
    accepted = 0
    for _ in range(500):
        tree = deterministic_tree(m, PREFIX, gen)
        rows = [m.p(PREFIX)] + [m.p(PREFIX + tuple(int(tree.tokens[a]) for a in tree.path_to(i)))
                                for i in range(tree.num_nodes)]
        accepted += V.sample_and_match(tree, torch.stack(rows), torch.rand((tree.num_nodes + 1, 2), generator=gen,
                                                                            dtype=torch.float64)).num_accepted
    assert accepted > 200
