"""SWIFT: the layer-skipping forward against transformers (skipping a sub-layer == zeroing its
output projection), drafting and matchness against that oracle with the full model's cache of the
prefix, and the skip-set search's rules. Uses the shipped 8-layer zoo target."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from specplug.config import SpecplugConfig, SpecplugConfigError
from specplug.proposers import Budget, ReqState
from specplug.proposers.drafters import DrafterError, TargetInfo
from specplug.proposers.swift import SkipSearch, SwiftOptions

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def target():
    from specplug.zoo import zoo_model

    return zoo_model("target")


@pytest.fixture(scope="module")
def hf(target):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt(target):
    from transformers import AutoTokenizer

    from specplug.zoo.samples import held_out_prompts

    return held_out_prompts(AutoTokenizer.from_pretrained(target), 1, 60)[0]


def skipped_hf(hf, attention, mlp):
    """transformers' model with those sub-layers' outputs zeroed: what skipping them computes."""
    m = copy.deepcopy(hf)
    for i in attention:
        m.model.layers[i].self_attn.o_proj.weight.data.zero_()
    for i in mlp:
        m.model.layers[i].mlp.down_proj.weight.data.zero_()
    return m


def hybrid_logits(hf, skipped, prefix, new):
    """Logits of ``new`` run through ``skipped`` against the full model's cache of ``prefix``."""
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache(config=hf.config)
        hf(torch.tensor([prefix]), past_key_values=cache, use_cache=True)
        pos = torch.arange(len(prefix), len(prefix) + len(new))[None]
        return skipped(torch.tensor([new]), past_key_values=cache, use_cache=True, position_ids=pos).logits[0]


def test_the_forward_equals_transformers_with_and_without_skips(target, hf, prompt):
    from specplug.proposers.layer_skip_lm import LayerSkipLM

    lm = LayerSkipLM(target)
    cache = lm.empty_cache()
    got = torch.cat([lm.forward(prompt[:25], 0, cache), lm.forward(prompt[25:], 25, cache)])
    with torch.no_grad():
        torch.testing.assert_close(got, hf(torch.tensor([prompt])).logits[0], atol=1e-4, rtol=1e-4)
    attention, mlp = {2, 5}, {1, 5, 6}
    lm.crop(cache, 40)
    got = lm.forward(prompt[40:50], 40, cache, attention, mlp)
    torch.testing.assert_close(got, hybrid_logits(hf, skipped_hf(hf, attention, mlp), prompt[:40], prompt[40:50]),
                               atol=1e-4, rtol=1e-4)


def proposer(target, **kw):
    cfg = SpecplugConfig(method="swift", num_speculative_tokens=8, swift={"target_model": str(target), **kw})
    return cfg.build_proposer()


def test_drafts_are_the_skipped_models_greedy_chain_with_early_stop(target, hf, prompt):
    attention, mlp = [2, 4], [3, 5, 6]
    lengths = {}
    for threshold in (0.0, 0.5):
        prop = proposer(target, skip_set={"attention": attention, "mlp": mlp}, stop_threshold=threshold)
        skipped = skipped_hf(hf, attention, mlp)
        for ctx in (prompt[:30], prompt[:33], prompt[:31] + [77]):  # grow, then diverge
            chain = prop.propose([ReqState("r", np.asarray(ctx), 20)], [Budget(8, tree=False)])[0]
            want, ids = [], list(ctx)
            for _ in range(8):  # oracle: every step recomputed; committed tokens but the root in the full cache
                probs = hybrid_logits(hf, skipped, ids[: len(ctx) - 1], ids[len(ctx) - 1 :])[-1].softmax(-1)
                p, t = probs.max(-1)
                want.append(int(t))
                if float(p) < threshold:
                    break
                ids.append(int(t))
            assert chain.chain_tokens() == want
            lengths.setdefault(threshold, []).append(len(want))
            cache, cached = prop._caches["r"]
            assert cached == ctx[:-1] and cache.length == len(ctx) - 1
    assert set(lengths[0.0]) == {8} and min(lengths[0.5]) < 8  # the early stop was exercised


def test_a_batch_drafts_what_each_request_drafts_alone(target, prompt):
    """Requests of different lengths and budgets drafted in one batched forward per position
    (chains leaving the batch at different steps) give each request's own chain."""
    skip = {"attention": [2, 4], "mlp": [3, 5, 6]}
    reqs = [ReqState("a", np.asarray(prompt[:30]), 20), ReqState("b", np.asarray(prompt[:41]), 20),
            ReqState("c", np.asarray(prompt[:35] + [77]), 20)]
    budgets = [Budget(8, tree=False), Budget(3, tree=False), Budget(8, tree=False)]
    together = proposer(target, skip_set=skip, stop_threshold=0.3).propose(reqs, budgets)
    alone = [proposer(target, skip_set=skip, stop_threshold=0.3).propose([r], [b])[0] for r, b in zip(reqs, budgets)]
    assert [t.chain_tokens() for t in together] == [t.chain_tokens() for t in alone]
    np.testing.assert_allclose(np.concatenate([t.scores for t in together]),
                               np.concatenate([t.scores for t in alone]), rtol=1e-4)
    assert len({t.num_nodes for t in together}) > 1  # the chains ended at different steps


def test_trees_are_the_caterpillar_of_the_chain_pruned_by_path_probability(target, hf, prompt):
    """Where the engine verifies trees: the spine is the chain drafted for a chain budget, each
    depth adds the skipped model's runners-up there (3 / 5 / 8 / 10 candidates by the spine
    token's confidence) as siblings of the spine node, scored by path probability, less likely
    ones than ``sibling_min_prob`` dropped; a small budget keeps the best-scoring nodes.
    Oracle: every distribution recomputed with transformers."""
    skip = {"attention": [2, 4], "mlp": [3, 5, 6]}
    skipped = skipped_hf(hf, skip["attention"], skip["mlp"])
    with torch.no_grad():  # the target's own continuation: the skipped model is confident on some of it
        text = hf.generate(torch.tensor([prompt[:40]]), max_new_tokens=12, do_sample=False)[0].tolist()
    seen_candidates, sizes = set(), {}
    for min_prob in (0.0, 0.02):
        cfg = SpecplugConfig(method="swift", num_speculative_tokens=64,
                             swift={"target_model": str(target), "skip_set": skip, "stop_threshold": 0.6,
                                    "sibling_min_prob": min_prob})
        prop = cfg.build_proposer()
        for ctx in (text[:45], text[:51]):
            req = [ReqState("r", np.asarray(ctx), 20)]
            spine = prop.propose(req, [Budget(64, tree=False)])[0].chain_tokens()
            want, ids, path = {}, list(ctx), 1.0  # token path from the root -> path probability
            for d, tok in enumerate(spine):
                probs = hybrid_logits(hf, skipped, ids[: len(ctx) - 1], ids[len(ctx) - 1 :])[-1].softmax(-1)
                p, t = probs.topk(10)
                p, t = p.tolist(), t.tolist()
                assert t[0] == tok
                k = 3 if p[0] > 0.95 else 5 if p[0] > 0.8 else 8 if p[0] > 0.5 else 10
                seen_candidates.add(k)
                for pj, tj in zip(p[:k], t[:k]):
                    if tj == tok or path * pj >= min_prob:
                        want[tuple(spine[:d]) + (tj,)] = path * pj
                path *= p[0]
                ids.append(tok)
            tree = prop.propose(req, [Budget(64, tree=True)])[0]
            got = {tuple(int(tree.tokens[i]) for i in tree.path_to(n)): float(tree.scores[n])
                   for n in range(tree.num_nodes)}
            assert got.keys() == want.keys() and len(want) > len(spine)  # siblings were added
            np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-3)
            assert [int(tree.tokens[i]) for i in tree.best_path()] == spine
            small = prop.propose(req, [Budget(5, tree=True)])[0]
            best5 = sorted(want, key=lambda k: (-want[k], len(k)))[:5]
            assert {tuple(int(small.tokens[i]) for i in small.path_to(n)) for n in range(small.num_nodes)} == set(best5)
            sizes.setdefault(min_prob, []).append(tree.num_nodes)
    assert len(seen_candidates) > 1  # more than one row of the confidence table was exercised
    assert sum(sizes[0.02]) < sum(sizes[0.0])  # and sibling_min_prob dropped some


def test_matchness_is_the_teacher_forced_agreement(target, hf, prompt):
    prop = proposer(target, context_window=16)
    tokens = prompt[:50]
    cache = prop._full_cache("m", tokens)
    coords = frozenset({0, 3, 7, 9})
    attention, mlp = prop.search.coords_to_layers(coords)
    assert attention == {1, 4} and mlp == {2, 4}
    got = prop.matchness(cache, tokens, coords)
    start = len(tokens) - 17
    logits = hybrid_logits(hf, skipped_hf(hf, attention, mlp), tokens[:start], tokens[start:-1])
    want = float((logits.argmax(-1) == torch.tensor(tokens[start + 1 :])).float().mean())
    assert got == pytest.approx(want)
    assert cache.length == len(tokens)  # scoring leaves the cache as it was


class RecordedTargetKV:
    """An engine's KV cache as ``TargetKV`` reads it: the full model's keys and values of each
    request's tokens (computed here by transformers), optionally perturbed."""

    def __init__(self, hf, tokens_of: dict, noise: float = 0.0):
        from transformers import DynamicCache

        self.num_layers, self.dtype, self.kv, self.reads = hf.config.num_hidden_layers, torch.float32, {}, []
        for rid, tokens in tokens_of.items():
            cache = DynamicCache(config=hf.config)
            with torch.no_grad():
                hf(torch.tensor([tokens]), past_key_values=cache, use_cache=True)
            g = torch.Generator().manual_seed(0)
            self.kv[rid] = [(layer.keys[0] + noise * torch.randn(layer.keys[0].shape, generator=g), layer.values[0])
                            for layer in cache.layers]

    def read(self, req_id, start, end):
        self.reads.append((req_id, start, end))
        kv = self.kv.get(req_id)
        return None if kv is None else [(k[:, start:end], v[:, start:end]) for k, v in kv]


def test_drafts_against_the_engines_kv_are_the_same_and_a_wrong_reader_is_dropped(target, hf, prompt, caplog):
    """With the committed tokens' keys and values read from the engine (here: transformers' own,
    as vLLM's paged cache holds the target's), the drafts are the recomputing proposer's; the
    reader is checked at its first read, and one whose keys disagree is dropped, loudly."""
    skip = {"attention": [2, 4], "mlp": [3, 5, 6]}
    plain = proposer(target, skip_set=skip, stop_threshold=0.0)
    reading = proposer(target, skip_set=skip, stop_threshold=0.0)
    reader = RecordedTargetKV(hf, {"r": prompt[:45]})
    reading.bind_target_kv(reader)
    with caplog.at_level("INFO", logger="vllm.specplug"):
        for n in (30, 33, 34, 40, 45):  # the request grows; each step reads only the new positions
            ctx = np.asarray(prompt[:n])
            want = plain.propose([ReqState("r", ctx, 20)], [Budget(6, tree=False)])[0]
            got = reading.propose([ReqState("r", ctx, 20)], [Budget(6, tree=False)])[0]
            assert got.chain_tokens() == want.chain_tokens()
    assert reader.reads == [("r", 0, 29), ("r", 29, 32), ("r", 32, 33), ("r", 33, 39), ("r", 39, 44)]
    assert "match a recomputation" in caplog.text
    wrong = proposer(target, skip_set=skip, stop_threshold=0.0)
    wrong.bind_target_kv(RecordedTargetKV(hf, {"r": prompt[:45]}, noise=0.5))
    with caplog.at_level("INFO", logger="vllm.specplug"):
        got = wrong.propose([ReqState("r", np.asarray(prompt[:30]), 20)], [Budget(6, tree=False)])[0]
    assert "differ from a recomputation" in caplog.text and wrong.target_kv is None
    want = plain.propose([ReqState("q", np.asarray(prompt[:30]), 20)], [Budget(6, tree=False)])[0]
    assert got.chain_tokens() == want.chain_tokens()  # recomputed instead


def test_the_search_rules():
    o = SwiftOptions(max_score=0.9, max_tolerance_iter=3, bayes_interval=2, seed=1)
    s = SkipSearch(8, 0.45, o)
    assert (s.dims, s.n) == (12, 5)
    assert s.candidate() == s.current and len(s.current) == 5  # the odd-layer start is scored first
    s.record(s.current, 0.5)
    seen = []
    for _ in range(3):
        c = s.candidate()
        assert len(c) == 5 and all(0 <= i < 12 for i in c)
        seen.append(c)
        s.record(c, 0.4)  # no gain
    assert not s.done and s.best == 0.5
    s.record(s.candidate(), 0.3)
    assert s.done  # tolerance exceeded
    attention, mlp = s.coords_to_layers(range(12))
    assert attention == mlp == set(range(1, 7))  # never layer 0 or 7
    s2 = SkipSearch(8, 0.45, o)
    s2.record(s2.candidate(), 0.95)
    assert s2.done  # confidence early stop


def test_the_search_runs_inside_propose_and_saves_the_set(target, prompt, tmp_path):
    cache_file = tmp_path / "skip.json"
    prop = proposer(target, context_window=8, max_opt_iter=6, bayes_interval=3, cache_file=str(cache_file), task="code")
    ctx = np.asarray(prompt[:40])
    for _ in range(6):
        prop.propose([ReqState("r", ctx, 30)], [Budget(4, tree=False)])  # 10 generated tokens >= window + 1
    assert prop.search.done and prop.search.iters == 6
    saved = json.loads(cache_file.read_text())
    key = f"{target.resolve()}::code"
    attention, mlp = prop.skip_layers()
    assert saved[key]["attention"] == attention and saved[key]["mlp"] == mlp
    again = proposer(target, cache_file=str(cache_file), task="code")
    assert again.search.done and again.skip_layers() == (attention, mlp)  # reused, no search
    assert not proposer(target, cache_file=str(cache_file), task="chat").search.done


def test_errors_name_the_key(target):
    with pytest.raises(DrafterError, match=r"swift\.skip_set: layers \[0, 7\] cannot be skipped"):
        proposer(target, skip_set={"attention": [0], "mlp": [7]})
    with pytest.raises(SpecplugConfigError, match=r"swift\.skip_ratio"):
        SpecplugConfig(method="swift", swift={"skip_ratio": 1.5})
    prop = SpecplugConfig(method="swift", swift={"skip_set": {"attention": [1]}}).build_proposer()
    with pytest.raises(DrafterError, match="not a local folder"):
        prop.bind_target(TargetInfo("org/model", 4096))
    prop.bind_target(TargetInfo(str(target), 4096))
    with pytest.raises(DrafterError, match="4096 vocabulary rows but the served target .* has 1024"):
        prop.bind_target(TargetInfo(str(target), 1024))
