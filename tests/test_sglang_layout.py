"""The layout specplug hands SGLang's NGRAM verify path, checked against SGLang's documented
semantics (tests/sglang_reference.py), and the engine-free draft source behind the SGLang worker.
No sglang import: these run everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.config import SpecplugConfig, SpecplugConfigError
from specplug.engines.sglang.drafting import DraftSource
from specplug.engines.sglang.layout import PAD_TOKEN_ID, layout_batch, layout_request
from specplug.engines.sglang.settings import CONFIG_ENV, algorithm_names, load_settings
from specplug.tree import DraftTree
from specplug.verify import greedy_verify
from tests.sglang_reference import greedy_walk, reconstruct_links
from tests.tree_strategies import trees


@settings(max_examples=200, deadline=None)
@given(tree=trees(max_nodes=15, vocab=5), extra=st.integers(1, 6), seq_len=st.integers(0, 50),
       root=st.integers(1, 9))
def test_layout_matches_sglang_tree_semantics(tree, extra, seq_len, root):
    width = tree.num_nodes + extra
    tokens, mask = layout_request(root, tree, width)
    assert tokens.shape == (width,) and mask.shape == (width, width)
    assert tokens[0] == root
    positions, parent, nxt, sib = reconstruct_links(mask, seq_len, width)
    n = tree.num_nodes
    # real nodes: the tree shifted by one, at depth positions
    assert (tokens[1 : n + 1] == tree.tokens).all()
    assert (parent[1 : n + 1] == tree.parents + 1).all()
    assert (positions[1 : n + 1] == seq_len + tree.depths()).all()
    assert positions[0] == seq_len and parent[0] == -1
    # padding: token 0 under node 0, after every real node
    assert (tokens[n + 1 :] == PAD_TOKEN_ID).all() and (parent[n + 1 :] == 0).all()
    # links enumerate exactly each node's children, in index order
    for v in range(width):
        kids, c = [], nxt[v]
        while c != -1:
            kids.append(int(c))
            c = sib[c]
        expect = [int(k) + 1 for k in tree.children(v - 1)] if v <= n else []
        if v == 0:
            expect += list(range(n + 1, width))
        assert kids == expect
    # the mask is the transitive ancestor-or-self relation
    m = mask.astype(bool)
    for i in range(width):
        anc, p = {i}, int(parent[i])
        while p != -1:
            anc.add(p)
            p = int(parent[p])
        assert set(np.flatnonzero(m[i])) == anc


@settings(max_examples=150, deadline=None)
@given(tree=trees(max_nodes=12, vocab=4), seed=st.integers(0, 2**31 - 1))
def test_sglang_greedy_walk_on_the_layout_accepts_what_specplug_verifies(tree, seed):
    """A target whose argmax depends on the path (vocab 4 so that drafts match): SGLang's greedy
    walk over the layout's links and specplug's greedy verifier both emit the target's greedy
    continuation; SGLang's walk may go further only through padding (token 0), where the target
    itself predicted 0."""
    salt = int(seed)

    def target(path) -> int:
        return hash((salt, *path)) % 4

    width = tree.num_nodes + 3
    tokens, mask = layout_request(7, tree, width)
    _, parent, nxt, sib = reconstruct_links(mask, 0, width)

    def path_to(v):
        out = []
        while v > 0:
            out.append(int(tokens[v]))
            v = int(parent[v])
        return out[::-1]

    walked = greedy_walk(tokens, nxt, sib, lambda v: target(path_to(v)))
    rows = [target([])] + [target([int(t) for t in tree.tokens[tree.path_to(i)]]) for i in range(tree.num_nodes)]
    logits = torch.nn.functional.one_hot(torch.tensor(rows), 4).float()
    verified = greedy_verify(tree, logits).tokens
    greedy = []
    for _ in range(len(walked)):
        greedy.append(target(greedy))
    assert walked == greedy and verified == greedy[: len(verified)]
    assert len(walked) >= len(verified)
    if len(walked) > len(verified):
        assert verified[-1] == PAD_TOKEN_ID  # the only way further: into a padding node


def test_layout_rejects_a_tree_wider_than_the_width():
    with pytest.raises(ValueError, match="does not fit in width 3"):
        layout_request(1, DraftTree.chain([1, 2, 3]), 3)


def test_layout_batch_is_the_flat_ngram_contract():
    t1, t2 = DraftTree.chain([5, 6]), DraftTree(np.array([4, 8]), np.array([-1, -1]))
    tokens, mask = layout_batch([1, 2], [t1, t2], 4)
    assert tokens.dtype == np.int64 and mask.dtype == np.int64
    assert tokens.tolist() == [1, 5, 6, 0, 2, 4, 8, 0]
    assert mask.reshape(2, 4, 4)[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]
    assert mask.reshape(2, 4, 4)[1].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]


# ---------------------------------------------------------------------- settings
def test_algorithm_names_cover_every_method():
    names = algorithm_names()
    assert {"SPECPLUG_RASD": "rasd", "SPECPLUG_RECYCLING": "recycling", "SPECPLUG_SUFFIX": "suffix"}.items() <= names.items()


def test_settings_width_and_config_sources(monkeypatch, tmp_path):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    s = load_settings("specplug_suffix", None)
    assert s.config.method == "suffix" and s.width == s.config.num_speculative_tokens + 1
    assert load_settings("SPECPLUG_RASD", 9).config.num_speculative_tokens == 8
    path = tmp_path / "s.yaml"
    path.write_text("method: recycling\nnum_speculative_tokens: 6\ntree: true\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    s = load_settings("SPECPLUG_RECYCLING", None)
    assert (s.width, s.config.tree) == (7, True)
    with pytest.raises(SpecplugConfigError, match="num_speculative_tokens: 6 .* disagrees with --speculative-num-draft-tokens 9"):
        load_settings("SPECPLUG_RECYCLING", 9)
    with pytest.raises(SpecplugConfigError, match="names method 'recycling' but the SGLang algorithm is SPECPLUG_SUFFIX"):
        load_settings("SPECPLUG_SUFFIX", None)
    cfg = SpecplugConfig(method="rasd", num_speculative_tokens=5)
    kwargs = cfg.to_sglang()  # sets the env var as inline JSON
    assert kwargs == {"speculative_algorithm": "SPECPLUG_RASD", "speculative_num_draft_tokens": 6}
    assert load_settings(kwargs["speculative_algorithm"], kwargs["speculative_num_draft_tokens"]).config == cfg
    monkeypatch.setenv(CONFIG_ENV, "{not json")
    with pytest.raises(SpecplugConfigError, match="SPECPLUG_CONFIG is not valid JSON"):
        load_settings("SPECPLUG_RASD", None)
    monkeypatch.delenv(CONFIG_ENV)
    with pytest.raises(SpecplugConfigError, match="NGRAM is not a specplug algorithm"):
        load_settings("NGRAM", None)


# ---------------------------------------------------------------------- draft source
def _target_stream(n: int) -> list[int]:
    """A deterministic 'greedy output' with repeats, as code has: the proposers learn it."""
    phrase = [11, 12, 13, 14, 15, 16, 17, 18]
    rng = np.random.default_rng(0)
    out = []
    while len(out) < n:
        out += phrase if rng.random() < 0.7 else [int(rng.integers(20, 40))]
    return out[:n]


@pytest.mark.parametrize("method", ["suffix", "recycling", "rasd"])
@pytest.mark.parametrize("tree", [False, True])
def test_draft_source_loop_reproduces_the_target_and_speculates(method, tree):
    """The SGLang round loop on the draft source: draft a layout, accept by SGLang's greedy walk
    against a fixed target stream, append the accepted tokens to the history. The output is the
    target stream exactly and rounds accept more than one token on average."""
    width = 9
    src = DraftSource(SpecplugConfig(method=method, num_speculative_tokens=width - 1, tree=tree), width)
    prompt = [1, 2, 3] + _target_stream(40)
    target = _target_stream(200)
    outs = {"a": [target[0]], "b": [target[0]]}  # the prefill produced the first token
    rounds = 0
    while any(len(o) < len(target) for o in outs.values()):
        live = [r for r, o in outs.items() if len(o) < len(target)]
        tokens, mask = src.draft(live, [prompt] * len(live), [outs[r] for r in live])
        tokens, mask = tokens.reshape(len(live), width), mask.reshape(len(live), width, width)
        for b, rid in enumerate(live):
            _, _, nxt, sib = reconstruct_links(mask[b], 0, width)
            out = outs[rid]
            # layout node v sits at output position len(out) + depth(v) - 1 + 1
            depth = mask[b].sum(axis=1) - 1
            accepted = greedy_walk(tokens[b], nxt, sib,
                                   lambda v: target[min(len(out) + int(depth[v]), len(target) - 1)])
            out += accepted[: len(target) - len(out)]
        rounds += 1
    assert outs["a"] == target and outs["b"] == target
    assert 2 * (len(target) - 1) / rounds > 1.5  # tokens per round (τ) over both requests
    src.erase(["a", "b"])
    assert src._hist == {}


class _Recorder:
    """Wraps a proposer and records the lifecycle calls the draft source makes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def start(self, rid, prompt, tenant=None):
        self.calls.append(("start", rid, list(prompt)))
        self.inner.start(rid, prompt)

    def observe(self, rid, ids, info=None):
        self.calls.append(("observe", rid, list(ids), info.root_token))
        self.inner.observe(rid, ids, info)

    def stop(self, rid):
        self.calls.append(("stop", rid))
        self.inner.stop(rid)

    def propose(self, batch, budgets):
        for r in batch:
            self.calls.append(("propose", r.req_id, r.token_ids.tolist()))
        return self.inner.propose(batch, budgets)


def test_draft_source_lifecycle_in_sync_and_overlap_modes():
    """Overlap mode: last round's accepted tokens arrive spliced, and a round later inside the
    output. Either way each committed token reaches the proposer once, with the right root, and
    the proposer drafts from the whole history."""
    src = DraftSource(SpecplugConfig(method="suffix", num_speculative_tokens=4), 5)
    rec = src.proposer = _Recorder(src.proposer)
    prompt = [1, 2, 3]
    src.draft(["r"], [prompt], [[7]])  # first round: prefill produced 7
    src.draft(["r"], [prompt], [[7]], [[8, 9]])  # overlap: 8, 9 accepted, not yet in output
    src.draft(["r"], [prompt], [[7, 8, 9]], [[4]])  # ... now they are; 4 spliced
    src.draft(["r"], [prompt], [[7, 8, 9, 4, 5]])  # synchronous again: 5 new
    assert rec.calls == [
        ("start", "r", [1, 2, 3]), ("observe", "r", [7], 3), ("propose", "r", [1, 2, 3, 7]),
        ("observe", "r", [8, 9], 7), ("propose", "r", [1, 2, 3, 7, 8, 9]),
        ("observe", "r", [4], 9), ("propose", "r", [1, 2, 3, 7, 8, 9, 4]),
        ("observe", "r", [5], 4), ("propose", "r", [1, 2, 3, 7, 8, 9, 4, 5]),
    ]
    rec.calls.clear()
    src.draft(["r"], [prompt], [[6]])  # retracted and re-run: the history shrank, state starts over
    assert rec.calls[:3] == [("stop", "r"), ("start", "r", [1, 2, 3]), ("observe", "r", [6], 3)]
    src.reset()
    assert rec.calls[-1] == ("stop", "r") and src._hist == {}


def test_draft_source_history_grows_past_its_buffer():
    src = DraftSource(SpecplugConfig(method="suffix", num_speculative_tokens=4), 5)
    out = []
    for t in range(300):
        out.append(t % 7)
        src.draft(["r"], [[1, 2]], [out])
    assert src._hist["r"].view().tolist() == [1, 2] + out


def test_draft_source_survives_a_failing_proposer(caplog):
    src = DraftSource(SpecplugConfig(method="suffix", num_speculative_tokens=3), 4)

    def boom(*a, **k):
        raise RuntimeError("boom")

    src.proposer.propose = boom
    tokens, mask = src.draft(["r"], [[1, 2]], [[3]])
    assert tokens.tolist() == [3, 0, 0, 0]  # only node 0 and padding: verify yields the bonus token
    assert "suffix proposer raised" in caplog.text
