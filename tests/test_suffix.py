"""SuffixDecoding against a brute-force substring-count oracle on random sequences."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.config import SpecplugConfig, SpecplugConfigError
from specplug.proposers.base import Budget, ReqState
from specplug.proposers.suffix import SuffixOptions, SuffixProposer, _Draft
from specplug.proposers.suffix_tree import SuffixTrie


def occurrences(seqs: list[list[int]], s: tuple[int, ...], depth: int) -> int:
    """Brute force: how many (sequence, start) positions hold substring s (len(s) <= depth)."""
    if len(s) > depth:
        return 0
    return sum(1 for q in seqs for i in range(len(q) - len(s) + 1) if tuple(q[i : i + len(s)]) == s)


def oracle_tree(seqs, ctx: tuple[int, ...], depth: int, min_p: float) -> dict[tuple[int, ...], float]:
    """Every continuation path below ctx with its path probability >= min_p (all of them)."""
    out = {}
    frontier = [((), 1.0)]
    base = occurrences(seqs, ctx, depth)
    while frontier:
        path, prob = frontier.pop()
        cur = occurrences(seqs, ctx + path, depth)
        for t in sorted({q[i + len(ctx) + len(path)] for q in seqs for i in range(len(q) - len(ctx) - len(path))
                         if tuple(q[i : i + len(ctx) + len(path)]) == ctx + path}):
            c = occurrences(seqs, ctx + path + (t,), depth)
            if c == 0:
                continue
            p = prob * c / cur
            if p >= min_p:
                out[path + (t,)] = p
                frontier.append((path + (t,), p))
    assert base > 0 or not out
    return out


def drafted_paths(d) -> dict[tuple[int, ...], float]:
    paths = {}
    for i, (tok, par) in enumerate(zip(d.tokens, d.parents)):
        prefix = () if par < 0 else next(k for k, v in paths.items() if v[1] == par)
        paths[prefix + (tok,)] = (d.probs[i], i)
    return {k: v[0] for k, v in paths.items()}


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=30), min_size=1, max_size=4),
       st.integers(2, 6), st.data())
@settings(max_examples=120, deadline=None)
def test_trie_counts_and_tree_drafts_match_brute_force(seqs, depth, data):
    trie = SuffixTrie(depth)
    for i, q in enumerate(seqs):
        trie.add_sequence(i, q)
    # counts of every stored substring
    for q in seqs:
        for i in range(len(q)):
            for L in range(1, depth + 1):
                s = tuple(q[i : i + L])
                if len(s) < L:
                    break
                node = 0
                for t in s:
                    node = trie.child(node, t)
                assert trie.count[node] == occurrences(seqs, s, depth)
    ctx = tuple(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=depth)))
    matches = trie.match(list(ctx), depth)
    prop = SuffixProposer(SuffixOptions(max_depth=depth, min_token_prob=0.2), 64)
    for p, node in enumerate(matches, start=1):
        d = prop._draft_from(trie, node, 10_000, tree=True)
        expect = oracle_tree(seqs, ctx[-p:], depth, 0.2)
        got = drafted_paths(d)
        assert set(got) == set(expect)
        for k in expect:
            assert got[k] == pytest.approx(expect[k])
        # truncated budget keeps the most probable nodes
        k = max(1, len(expect) // 2)
        dk = prop._draft_from(trie, node, k, tree=True)
        assert sorted(dk.probs, reverse=True) == pytest.approx(sorted(expect.values(), reverse=True)[:k]) if expect else dk.tokens == []


@given(st.lists(st.integers(0, 3), min_size=1, max_size=80), st.integers(1, 8), st.integers(1, 12),
       st.sampled_from([True, False]), st.sampled_from([0.0, 0.1, 0.3]))
@settings(max_examples=200, deadline=None)
def test_local_drafts_equal_drafts_from_the_full_context_trie(seq, depth, cap, tree, min_p):
    """The local context is matched on demand (suffix_local.py); every draft must be the one the
    paper's per-request suffix trie over the same tokens gives (counts, child order, budgets)."""
    prop = SuffixProposer(SuffixOptions(max_depth=depth, min_token_prob=min_p, max_cached_requests=0), 64)
    half = len(seq) // 2
    prop.start("r", seq[:half])
    prop.observe("r", seq[half:])  # appended token by token, as the engine reports commits
    (got,) = prop.propose([_state("r", seq, half)], [Budget(cap, tree=tree)])

    trie = SuffixTrie(depth)
    trie.add_sequence(0, seq)
    matches = list(trie.active_nodes(0))  # node of seq[-p:] for p = 1..: the old local matches
    want = prop._best_draft(lambda p, budget: (trie, matches[p - 1]), len(matches), cap, tree)
    assert got.tokens.tolist() == want.tokens
    assert got.parents.tolist() == want.parents
    if want.tokens:
        assert got.scores.tolist() == pytest.approx(want.probs)


class _EveryMatch(SuffixProposer):
    """The oracle: a draft from every match length, the best score kept, ties to the longer
    match (no skipping of matches that occur where a longer one does, no score bounds)."""

    def _best_draft(self, subtree, num_matches, cap, tree, occurrences=None):
        best = None
        for p in range(1, num_matches + 1):
            budget = self._budget(p, cap)
            if budget == 0:
                continue
            d = self._draft_from(*subtree(p, budget), budget, tree)
            d.match_len = p
            if d.tokens and (best is None or d.score >= best.score):
                best = d
        return best if best is not None else _Draft()


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=40), min_size=1, max_size=4),
       st.integers(2, 10), st.integers(1, 12), st.sampled_from([True, False]),
       st.sampled_from([0.5, 1.0, 2.5]), st.sampled_from([-2.0, 0.0, 1.5]), st.sampled_from([0.0, 0.2]))
@settings(max_examples=200, deadline=None)
def test_skipping_matches_with_the_same_occurrences_changes_no_draft(seqs, depth, cap, tree, factor, offset, min_p):
    """Local context and global cache, any budget rule: the drafts equal the oracle's."""
    opts = SuffixOptions(max_depth=depth, max_spec_factor=factor, max_spec_offset=offset, min_token_prob=min_p)
    fast, slow = SuffixProposer(opts, 64), _EveryMatch(opts, 64)
    *done, last = seqs
    for i, seq in enumerate(done):  # finished requests fill the global cache
        for prop in (fast, slow):
            prop.start(f"old{i}", seq[:2])
            prop.observe(f"old{i}", seq[2:])
            prop.stop(f"old{i}")
    for prop in (fast, slow):
        prop.start("r", last[:3])
    for n in range(3, len(last) + 1):  # draft after every commit
        got, want = (prop.propose([_state("r", last[:n], min(3, n))], [Budget(cap, tree=tree)])[0]
                     for prop in (fast, slow))
        assert got.tokens.tolist() == want.tokens.tolist()
        assert got.parents.tolist() == want.parents.tolist()
        if n < len(last):
            for prop in (fast, slow):
                prop.observe("r", [last[n]])


@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 8), st.data())
@settings(max_examples=100, deadline=None)
def test_bulk_add_then_append_equals_appending_token_by_token(seq, depth, data):
    h = data.draw(st.integers(0, len(seq)))
    bulk, step = SuffixTrie(depth), SuffixTrie(depth)
    bulk.add_sequence("s", seq[:h])
    bulk.extend("s", seq[h:])
    step.add_sequence("s")
    step.extend("s", seq)
    assert bulk.substrings() == step.substrings()
    assert [paths_key(bulk, n) for n in bulk.active_nodes("s")] == [paths_key(step, n) for n in step.active_nodes("s")]


def paths_key(t, node):
    key = []
    while node > 0:
        key.append(t.token[node])
        node = t.parent[node]
    return tuple(key[::-1])


@given(st.lists(st.integers(0, 4), min_size=5, max_size=60), st.integers(2, 8))
@settings(max_examples=100, deadline=None)
def test_removal_restores_counts(seq, depth):
    trie = SuffixTrie(depth)
    trie.add_sequence("a", seq[: len(seq) // 2])
    before = trie.substrings()
    trie.add_sequence("b", seq)
    trie.remove_sequence("b")
    assert trie.substrings() == before
    assert not trie.tail or all(s is trie.sequence("a") for s, _, _ in trie.tail.values())


@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 9), min_size=1, max_size=25), st.booleans()),
                min_size=1, max_size=8), st.integers(1, 7))
@settings(max_examples=150, deadline=None)
def test_adds_and_removals_in_any_order_keep_every_count_exact(ops, depth):
    """With tails (suffix_tree module doc), removals and freed nodes reused, the trie holds exactly
    the stored sequences' substrings (up to ``depth``) with their occurrence counts."""
    trie, stored = SuffixTrie(depth), {}
    for i, (remove_oldest, seq, final) in enumerate(ops):
        if remove_oldest and stored:
            oldest = min(stored)
            trie.remove_sequence(oldest)
            del stored[oldest]
        trie.add_sequence(i, seq, final=final)
        stored[i] = seq
    seqs = list(stored.values())
    expect = {tuple(q[a:b]) for q in seqs for a in range(len(q)) for b in range(a + 1, min(len(q), a + depth) + 1)}
    got = trie.substrings()  # unfolds every tail
    assert set(got) == expect
    assert all(got[s] == occurrences(seqs, s, depth) for s in expect)
    assert trie.num_nodes == len(expect) + 1 and not trie.tail
    for c in range(1, len(trie.count)):
        if trie.parent[c] >= 0:
            assert trie.children[trie.parent[c]][trie.token[c]] == c
            assert trie.depth[c] == trie.depth[trie.parent[c]] + 1


def test_fresh_text_costs_one_node_per_token_not_one_per_substring():
    trie = SuffixTrie(24)
    trie.add_sequence("a", list(range(200)))  # nothing repeats: every suffix leaves the trie at once
    # one node per suffix that reached the depth bound (177), the 23 still-growing suffixes in full
    assert trie.num_nodes == 1 + 177 + sum(range(1, 24))
    assert trie.child(trie.child(0, 5), 6) >= 0 and trie.count[trie.child(trie.child(0, 5), 6)] == 1
    trie.remove_sequence("a")
    assert trie.num_nodes == 1 and not trie.tail
    trie.add_sequence("b", list(range(200)), final=True)  # a finished response: no suffix grows
    assert trie.num_nodes == 1 + 200
    with pytest.raises(ValueError, match="final"):
        trie.extend("b", [7])


def _state(rid, toks, n_prompt, tenant=None):
    return ReqState(rid, np.asarray(toks), n_prompt, tenant)


def test_repetition_in_context_is_drafted():
    prop = SuffixProposer(SuffixOptions(), 16)
    toks = [5, 6, 7, 8, 9, 10, 11, 1, 2, 5, 6, 7]
    prop.start("r", toks)
    (tree,) = prop.propose([_state("r", toks, len(toks))], [Budget(16)])
    # match length 3 ([5, 6, 7]) -> budget alpha * 3 = 3 tokens
    assert tree.chain_tokens() == [8, 9, 10]


def test_global_cache_and_tenant_isolation():
    answer = [40, 41, 42, 43, 44, 45, 46]
    for iso, expect_draft in ((False, True), (True, False)):
        prop = SuffixProposer(SuffixOptions(tenant_isolation=iso), 16)
        prop.start("a", [1, 2, 3], tenant="t1")
        prop.observe("a", answer)
        prop.stop("a")
        prop.start("b", [9, 9, 40, 41], tenant="t2")
        (tree,) = prop.propose([_state("b", [9, 9, 40, 41], 4, "t2")], [Budget(16)])
        assert (tree.chain_tokens()[:2] == [42, 43]) == expect_draft  # match 2 -> 2 tokens
        # same tenant always sees it
        prop.start("c", [9, 40, 41], tenant="t1")
        (tree,) = prop.propose([_state("c", [9, 40, 41], 3, "t1")], [Budget(16)])
        assert tree.chain_tokens()[:2] == [42, 43]


def test_path_mode_and_chain_budget_return_chains():
    prop = SuffixProposer(SuffixOptions(mode="path"), 16)
    toks = [1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2]
    (tree,) = prop.propose([_state("r", toks, len(toks))], [Budget(16)])
    assert list(tree.parents) == list(range(-1, tree.num_nodes - 1))
    prop2 = SuffixProposer(SuffixOptions(), 16)
    (t2,) = prop2.propose([_state("r", toks, len(toks))], [Budget(3, tree=False)])
    assert t2.num_nodes <= 3 and list(t2.parents) == list(range(-1, t2.num_nodes - 1))


def test_global_cache_respects_request_and_byte_caps():
    prop = SuffixProposer(SuffixOptions(max_cached_requests=5, max_cache_bytes=200_000), 16)
    rng = np.random.default_rng(0)
    for i in range(60):
        prop.start(str(i), [1, 2])
        prop.observe(str(i), rng.integers(0, 50, size=80).tolist())
        prop.stop(str(i))
        stats = prop.global_cache_stats()
        assert stats["cached_requests"] <= 5 and stats["approx_bytes"] <= 200_000


def test_resync_from_engine_tokens_without_observe():
    prop = SuffixProposer(SuffixOptions(), 8)
    toks = [3, 4, 5, 6, 3, 4, 5]
    (tree,) = prop.propose([_state("r", toks, 2)], [Budget(8)])  # start() never called
    assert tree.chain_tokens()[0] == 6


@pytest.mark.parametrize("bad, key", [({"max_depth": 0}, "suffix.max_depth"), ({"min_token_prob": 2}, "suffix.min_token_prob"),
                                      ({"mode": "forest"}, "suffix.mode"), ({"max_cached_requests": -1}, "suffix.max_cached_requests")])
def test_bad_options_name_the_key(bad, key):
    with pytest.raises(SpecplugConfigError, match=key.replace(".", r"\.")):
        SpecplugConfig(method="suffix", suffix=bad)


def test_drafting_time_per_request_is_reported():
    """Not a timing assertion: prints the measured cost so regressions are visible in CI logs."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 200, size=400).tolist()
    toks = base + base[:300]
    prop = SuffixProposer(SuffixOptions(max_depth=24), 16)
    prop.start("r", toks)
    st_ = _state("r", toks, len(toks))
    t = time.perf_counter()
    for _ in range(200):
        prop.propose([st_], [Budget(16)])
    us = (time.perf_counter() - t) / 200 * 1e6
    print(f"suffix drafting: {us:.1f} us per request per step (depth 24, budget 16)")


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=40), min_size=1, max_size=3),
       st.lists(st.integers(0, 3), min_size=1, max_size=120), st.integers(2, 10), st.data())
@settings(max_examples=150, deadline=None)
def test_lazily_folded_global_match_equals_matching_afresh(cached, stream, depth, data):
    """observe() only records tokens; the global match is brought up to date when the request
    drafts (token by token, or afresh after many tokens). At every draft it must be the match of
    the whole context in the global trie, whatever the pattern of drafting and not drafting."""
    prop = SuffixProposer(SuffixOptions(max_depth=depth), 16)
    for i, seq in enumerate(cached):  # past responses in the global trie
        prop.start(f"old{i}", [0])
        prop.observe(f"old{i}", seq)
        prop.stop(f"old{i}")
    prop.start("r", stream[:1])
    tokens = list(stream[:1])
    trie = prop._global[None]
    for t in stream[1:]:
        prop.observe("r", [t])
        tokens.append(t)
        if data.draw(st.booleans()):  # this step the request drafts
            prop.propose([ReqState("r", np.asarray(tokens), 1)], [Budget(4)])
            req = prop._reqs["r"]
            assert req.global_match == trie.match(tokens, depth)
            assert req.unfolded == 0


def test_a_looping_context_drafts_from_one_match_length_not_from_every_one(monkeypatch):
    """A looping output matches at every length p with as many occurrences as loop turns. Tried
    longest first, a dozen lengths each built the trie of hundreds of continuations (1.8 ms per
    request per step for a 250-token period-1 loop, inside the engine step). Tried in order of
    the score they can reach, one is enough: its draft reaches the bound of every other length."""
    from specplug.proposers import suffix_local

    built = []
    original = suffix_local.LocalContext.continuations
    monkeypatch.setattr(suffix_local.LocalContext, "continuations",
                        lambda self, occ, p, n: built.append(p) or original(self, occ, p, n))
    prop = SuffixProposer(SuffixOptions(max_cached_requests=0), 16)
    seq = list(range(2, 62)) + [7] * 250
    prop.start("r", seq[:60])
    prop.observe("r", seq[60:])
    (got,) = prop.propose([_state("r", seq, 60)], [Budget(16)])
    assert got.tokens.tolist() == [7] * 12  # p = 12: 12 tokens deep (max_depth 24), budget 12
    assert built == [12]
    want = _EveryMatch(SuffixOptions(max_cached_requests=0), 16).propose([_state("r", seq, 60)], [Budget(16)])[0]
    assert want.tokens.tolist() == got.tokens.tolist()
