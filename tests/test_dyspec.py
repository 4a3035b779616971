"""DySpec: the draft LM's cache and tree levels against full recomputation, and the level-wise
expansion against a slow oracle that recomputes every node's distribution from its whole path.
Uses the shipped 2-layer zoo draft (real, peaked distributions) and held-out code prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specplug.config import SpecplugConfig, SpecplugConfigError
from specplug.proposers import Budget, ReqState
from specplug.proposers.drafters import DrafterError, TargetInfo

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def zoo():
    from transformers import AutoTokenizer

    from specplug.zoo import zoo_model
    from specplug.zoo.samples import held_out_prompts

    prompts = held_out_prompts(AutoTokenizer.from_pretrained(zoo_model("target")), 3, 40)
    return {"draft": zoo_model("draft"), "target": zoo_model("target"), "prompts": prompts}


@pytest.fixture(scope="module")
def oracle(zoo):
    """transformers' LlamaForCausalLM on the draft's weights: every path recomputed in full."""
    from specplug.proposers.draft_lm import _load

    return _load(zoo["draft"])


@pytest.fixture(scope="module", params=["lean", "transformers"])
def lm(zoo, request):
    from specplug.proposers.draft_lm import LeanDraftLM, TransformersDraftLM

    return (LeanDraftLM if request.param == "lean" else TransformersDraftLM)(zoo["draft"])


def test_the_zoo_draft_gets_the_lean_drafter(zoo):
    from specplug.proposers.draft_lm import LeanDraftLM

    prop = SpecplugConfig(method="dyspec", dyspec={"draft_model": str(zoo["draft"])}).build_proposer()
    assert isinstance(prop.lm, LeanDraftLM)


def full_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_next_logits_reuses_and_crops_the_cache(lm, oracle, zoo):
    p = zoo["prompts"][0]
    for ids in (p[:20], p[:30], p[:25] + [7, 8], p[:25] + [7, 8, 9], p[:10]):  # grow, diverge, shrink
        got = lm.next_logits("r", ids)
        torch.testing.assert_close(got, full_logits(oracle, ids), atol=2e-4, rtol=1e-4)
        assert lm.held("r") == (ids, len(ids))
    lm.drop("r")


def test_tree_levels_equal_each_path_recomputed(lm, oracle, zoo):
    ctx = zoo["prompts"][1][:30]
    lm.next_logits("t", ctx)
    P = len(ctx)
    # level 1: two siblings (slots P, P+1); level 2: a child of each, and a second child of the first
    l1 = lm.tree_level("t", [11, 12], [P, P], [[], []])
    l2 = lm.tree_level("t", [13, 14, 15], [P + 1] * 3, [[P], [P + 1], [P]])
    for got, path in [(l1[0], [11]), (l1[1], [12]), (l2[0], [11, 13]), (l2[1], [12, 14]), (l2[2], [11, 15])]:
        torch.testing.assert_close(got, full_logits(oracle, ctx + path), atol=2e-4, rtol=1e-4)
    lm.end_tree("t")
    assert lm.held("t") == (ctx, P)
    torch.testing.assert_close(lm.next_logits("t", ctx + [5]), full_logits(oracle, ctx + [5]), atol=2e-4, rtol=1e-4)
    lm.drop("t")


def oracle_tree(oracle, ctx, budget, max_depth, topk, width, min_value, calibration):
    """The same level-wise DySpec expansion, every distribution recomputed from the whole path."""
    nodes = []  # (token, parent, value, depth)

    def path(i):
        out = []
        while i >= 0:
            out.append(nodes[i][0])
            i = nodes[i][1]
        return out[::-1]

    def children(p, probs, base, d):
        new = []
        for r, t in enumerate(np.argsort(-probs, kind="stable")[:topk]):
            v = base * calibration.prob(r, float(probs[t]))
            if v < min_value:
                continue
            nodes.append((int(t), p, v, d))
            new.append(len(nodes) - 1)
        return new

    level = children(-1, full_logits(oracle, ctx).softmax(-1).numpy(), 1.0, 1)
    for d in range(1, max_depth):
        if not level:
            break
        values = [n[2] for n in nodes]
        if len(values) >= budget and max(values[i] for i in level) <= sorted(values, reverse=True)[budget - 1]:
            break
        expand = sorted(level, key=lambda i: (-nodes[i][2], i))[:width]
        level = []
        for i in expand:
            level += children(i, full_logits(oracle, ctx + path(i)).softmax(-1).numpy(), nodes[i][2], d + 1)
    keep = sorted(range(len(nodes)), key=lambda i: (-nodes[i][2], nodes[i][3], i))[:budget]
    return {tuple(path(i)): nodes[i][2] for i in keep}


def tree_paths(tree) -> dict:
    return {tuple(int(tree.tokens[j]) for j in tree.path_to(i)): float(tree.scores[i]) for i in range(tree.num_nodes)}


@pytest.mark.parametrize("budget,topk,width,min_value", [(16, 4, 4, 0.01), (10, 3, 2, 0.0), (6, 2, 8, 0.05)])
@pytest.mark.parametrize("calibrated", [False, True])
def test_expansion_equals_the_slow_oracle(zoo, oracle, budget, topk, width, min_value, calibrated):
    cfg = SpecplugConfig(method="dyspec", num_speculative_tokens=16, tree=True,
                         dyspec={"draft_model": str(zoo["draft"]), "topk": topk, "width": width, "min_value": min_value,
                                 "calibrate": calibrated})
    prop = cfg.build_proposer()
    if calibrated:  # measured rates far from q: rank 0 accepted 90%, the others 5%
        for b in range(10):
            for _ in range(50):
                prop.calibration.update(0, b / 10 + 0.05, True)
                prop.calibration.update(1, b / 10 + 0.05, False)
            for _ in range(5):
                prop.calibration.update(0, b / 10 + 0.05, False)
                prop.calibration.update(1, b / 10 + 0.05, True)
    for i, p in enumerate(zoo["prompts"]):
        tree = prop.propose([ReqState(str(i), np.asarray(p), 20)], [Budget(budget, tree=True)])[0]
        want = oracle_tree(oracle, p, budget, budget, topk, width, min_value, prop.calibration)
        got = tree_paths(tree)
        assert set(got) == set(want)
        for path, v in want.items():
            assert got[path] == pytest.approx(v, rel=1e-3)
        assert tree.num_nodes <= budget and all(tree.scores[c] <= tree.scores[p] for c, p in
                                                enumerate(tree.parents) if p >= 0)
        tree.validate(distinct_siblings=True)


def test_calibration_learns_from_the_committed_tokens(zoo):
    from specplug.proposers.dyspec import AcceptanceCalibration

    cal = AcceptanceCalibration(prior=8.0)
    assert cal.prob(0, 0.05) == pytest.approx(0.05) and cal.prob(3, 0.3) == pytest.approx(0.3)  # nothing measured: q
    for _ in range(24):
        cal.update(0, 0.05, True)
    assert cal.prob(0, 0.05) == pytest.approx((24 + 8 * 0.05) / 32)
    assert cal.prob(1, 0.05) == pytest.approx(0.05)  # runners-up are counted apart

    prop = SpecplugConfig(method="dyspec", tree=True, dyspec={"draft_model": str(zoo["draft"])}).build_proposer()
    p = zoo["prompts"][0]
    tree = prop.propose([ReqState("r", np.asarray(p), 20)], [Budget(8, tree=True)])[0]
    first = tree.children(-1)
    path = [int(tree.tokens[j]) for j in tree.path_to(int(first[0]))]  # the first root child is accepted
    missing = next(t for t in range(5, 4096) if t not in tree.tokens[tree.children(int(first[0]))])
    prop.propose([ReqState("r", np.asarray(p + path + [missing]), 20)], [Budget(8, tree=True)])
    trials = prop.calibration.trials.sum()
    # every root child was a trial (one hit), then every child of the accepted node (no hit)
    assert trials == len(first) + len(tree.children(int(first[0])))
    assert prop.calibration.hits.sum() == 1


def test_chain_is_the_draft_models_greedy_continuation(zoo, oracle):
    cfg = SpecplugConfig(method="dyspec", num_speculative_tokens=8,
                         dyspec={"draft_model": str(zoo["draft"]), "min_value": 0.0, "calibrate": False})
    prop = cfg.build_proposer()
    p = zoo["prompts"][2]
    chain = prop.propose([ReqState("c", np.asarray(p), 20)], [Budget(8, tree=False)])[0]
    ids = list(p)
    for _ in range(8):
        ids.append(int(full_logits(oracle, ids).argmax()))
    assert chain.chain_tokens() == ids[len(p):]
    # the next step after two accepted tokens and a bonus reuses the cache and is still exact
    ids2 = ids[: len(p) + 2] + [42]
    chain2 = prop.propose([ReqState("c", np.asarray(ids2), 20)], [Budget(4, tree=False)])[0]
    want = list(ids2)
    for _ in range(4):
        want.append(int(full_logits(oracle, want).argmax()))
    assert chain2.chain_tokens() == want[len(ids2):]


def test_the_draft_must_share_the_targets_tokenizer(zoo, tmp_path):
    from specplug.models.tiny import build_tiny_llama

    prop = SpecplugConfig(method="dyspec", dyspec={"draft_model": "zoo-draft"}).build_proposer()
    prop.bind_target(TargetInfo(str(zoo["target"]), 4096))  # same tokenizer: accepted
    tiny = build_tiny_llama()
    with pytest.raises(DrafterError, match=r"dyspec\.draft_model: the drafter .*draft and the target .*tiny.* "
                                           r"have different tokenizers"):
        prop.bind_target(TargetInfo(str(tiny), 4096))
    with pytest.raises(DrafterError, match="has 4096 vocabulary rows but the target .* has 1000"):
        prop.bind_target(TargetInfo(str(zoo["target"]), 1000))
    with pytest.raises(DrafterError, match="not a local folder"):
        prop.bind_target(TargetInfo("some-org/some-model", 4096))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(SpecplugConfigError, match=r"dyspec\.draft_model: Field required"):
        SpecplugConfig(method="dyspec")
    with pytest.raises(SpecplugConfigError, match=r"dyspec\.topk: "):
        SpecplugConfig(method="dyspec", dyspec={"draft_model": "zoo-draft", "topk": 0})
    with pytest.raises(DrafterError, match=r"dyspec\.draft_model: drafter folder not found: '/nope'"):
        SpecplugConfig(method="dyspec", dyspec={"draft_model": "/nope"}).build_proposer()


def test_sample_without_replacement_draws_like_successive_renormalised_draws():
    from scipy.stats import chisquare

    from specplug.proposers.dyspec import sample_without_replacement

    p = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    rng = np.random.default_rng(0)
    n = 20000
    counts: dict = {}
    for _ in range(n):
        d = sample_without_replacement(p, 2, rng)
        counts[tuple(int(t) for t in d)] = counts.get(tuple(int(t) for t in d), 0) + 1
    pairs = [(a, b) for a in range(4) for b in range(4) if a != b]
    want = np.array([p[a] * p[b] / (1 - p[a]) for a, b in pairs])
    assert set(counts) <= set(pairs)  # distinct, and never the zero-probability token
    assert chisquare([counts.get(ab, 0) for ab in pairs], want * n).pvalue > 1e-3
    assert sorted(sample_without_replacement(p, 9, rng).tolist()) == [0, 1, 2, 3]  # k past the support


def test_sampled_tree_carries_the_distribution_each_node_was_drawn_from(zoo, oracle):
    """Budget.temperature > 0: a stochastic tree whose q rows are the draft model's softmax(logits / T)
    at each node's parent, with values that never grow along a parent's draw order."""
    prop = SpecplugConfig(method="dyspec", num_speculative_tokens=12, tree=True,
                          dyspec={"draft_model": str(zoo["draft"]), "min_value": 0.0}).build_proposer()
    p = zoo["prompts"][1]
    for _ in range(3):
        tree = prop.propose([ReqState("s", np.asarray(p), 20)], [Budget(12, tree=True, temperature=0.7)])[0]
        assert not tree.deterministic and tree.num_nodes == 12
        tree.validate(distinct_siblings=True)
        for i in range(tree.num_nodes):
            ctx = list(p) + [int(tree.tokens[j]) for j in tree.path_to(i)[:-1]]
            want = torch.softmax(full_logits(oracle, ctx) / 0.7, -1).numpy()
            np.testing.assert_allclose(tree.draft_probs[i], want, atol=2e-5)
        for node in [-1, *range(tree.num_nodes)]:
            kids = tree.children(node)
            assert all(tree.scores[a] >= tree.scores[b] for a, b in zip(kids, kids[1:]))


def test_sampled_trees_verified_by_recursive_rejection_emit_the_target_distribution(zoo):
    """The first token emitted after a sampled dyspec tree, verified by recursive rejection against
    the zoo target, follows the target's distribution (chi-square over many trees). The budget of
    3 nodes against topk 4 makes the top-B cut drop drawn siblings, which only keeping draw-order
    prefixes makes exact. (About 20 ms per tree on two cores.)"""
    budget = 3
    from scipy.stats import chisquare

    from specplug.proposers.draft_lm import _load
    from specplug.verify import recursive_rejection

    target = _load(zoo["target"])
    prop = SpecplugConfig(method="dyspec", num_speculative_tokens=12, tree=True,
                          dyspec={"draft_model": str(zoo["draft"]), "topk": 4, "min_value": 0.0}).build_proposer()
    prompt = zoo["prompts"][0]
    p_root = torch.softmax(full_logits(target, prompt), -1).double()
    gen = torch.Generator().manual_seed(0)
    n, counts, accepted = 2000, {}, 0
    for _ in range(n):
        tree = prop.propose([ReqState("x", np.asarray(prompt), 20)], [Budget(budget, tree=True, temperature=1.0)])[0]
        rows = torch.full((tree.num_nodes + 1, p_root.numel()), 1.0 / p_root.numel(), dtype=torch.float64)
        rows[0] = p_root  # the first emitted token depends on the root row only
        res = recursive_rejection(tree, rows, torch.rand(tree.num_nodes + 1, 2, generator=gen, dtype=torch.float64))
        counts[res.tokens[0]] = counts.get(res.tokens[0], 0) + 1
        accepted += res.num_accepted > 0
    top = torch.argsort(p_root, descending=True)[:12].tolist()
    observed = [counts.get(t, 0) for t in top] + [n - sum(counts.get(t, 0) for t in top)]
    expected = [float(p_root[t]) * n for t in top] + [(1 - float(p_root[top].sum())) * n]
    assert chisquare(observed, expected).pvalue > 1e-3
    assert accepted > n // 4  # not vacuous: the draft's children were accepted often


def test_top_k_stable_is_the_head_of_a_stable_argsort():
    from specplug.proposers.dyspec import top_k_stable

    rng = np.random.default_rng(0)
    for _ in range(200):
        probs = rng.choice([0.0, 0.1, 0.2, 0.3], size=rng.integers(1, 40)) if rng.random() < 0.5 else rng.random(50)
        for k in (1, 2, 4, 60):
            assert top_k_stable(probs, k).tolist() == np.argsort(-probs, kind="stable")[:k].tolist()


@pytest.mark.parametrize("min_value", [0.0, 0.01])
def test_chains_drafted_together_equal_each_chain_drafted_alone(zoo, min_value):
    """Trees off: the requests' chains grow in one batched draft forward per depth; each is the
    chain ``_grow`` drafts for that request alone (tokens, values, what calibration is told)."""
    cfg = SpecplugConfig(method="dyspec", num_speculative_tokens=8,
                         dyspec={"draft_model": str(zoo["draft"]), "min_value": min_value})
    together, alone = cfg.build_proposer(), cfg.build_proposer()
    longest = 0
    for step in range(3):  # the caches carry over: later steps feed only the new tokens
        reqs = [ReqState(f"r{i}", np.asarray(p[: 25 + 3 * i + step]), 20) for i, p in enumerate(zoo["prompts"])]
        caps = [8, 3, 0]
        trees = together.propose(reqs, [Budget(c, tree=False) for c in caps])
        assert trees[2].num_nodes == 0
        for r in reqs:  # what propose() does first, for every request
            alone._learn(r.req_id, r.token_ids.tolist())
        for r, cap, tree in zip(reqs[:2], caps, trees):
            tokens = r.token_ids.tolist()
            want = alone._grow(r.req_id, tokens, cap, cap, 1, 1)
            assert tree.tokens.tolist() == want.tokens.tolist() and tree.parents.tolist() == want.parents.tolist()
            if want.num_nodes:
                np.testing.assert_allclose(tree.scores, want.scores, rtol=1e-5)
                assert together._sent[r.req_id].tok == alone._sent[r.req_id].tok
        longest = max([longest] + [t.num_nodes for t in trees])
    assert longest > 2  # real chains, not single tokens


def test_a_kept_chain_serves_the_next_step_where_accepted_and_is_cropped_where_not(zoo, oracle):
    """LeanDraftLM.end_chain keeps the chain's fed nodes cached as committed tokens; the next
    step's logits equal a full recomputation whether the target accepted them or not."""
    from specplug.proposers.draft_lm import LeanDraftLM

    lm = LeanDraftLM(zoo["draft"])
    ctx = zoo["prompts"][0][:30]
    for after in ([41, 42, 7], [41, 9], [5], [41, 42, 43, 8]):  # accepted 2, 1, 0, all 3 (+ the target's token)
        lm.next_logits_batch(["a"], [ctx])
        lm.extend_batch(["a"], [41])
        lm.extend_batch(["a"], [42])
        lm.end_chain("a", [41, 42, 43])  # 43 was drafted last, never fed
        assert lm.held("a") == (ctx + [41, 42], len(ctx) + 2)
        got = lm.next_logits_batch(["a"], [ctx + after])[0]
        torch.testing.assert_close(got, full_logits(oracle, ctx + after), atol=2e-4, rtol=1e-4)
        assert lm.held("a") == (ctx + after, len(ctx + after))
