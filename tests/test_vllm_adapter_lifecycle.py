"""SpecplugProposer's bookkeeping (row -> request id, lifecycle, clamps, failures), driven with
small stand-ins for vLLM's input batch and scheduler output. The real engine is exercised in
integration_tests/; this pins the adapter's own logic, including cases hard to provoke there."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from specplug.config import SpecplugConfig
from specplug.engines.vllm.proposer import SpecplugProposer
from specplug.proposers import Proposer, register
from specplug.proposers.base import ProposerOptions
from specplug.tree import DraftTree


class RecordingOptions(ProposerOptions):
    fail: bool = False


class RecordingProposer(Proposer):
    name = "recording_for_tests"
    Options = RecordingOptions
    log: list = []

    def start(self, req_id, prompt_ids, tenant=None):
        self.log.append(("start", req_id, list(prompt_ids)))

    def observe(self, req_id, accepted_ids, info=None):
        self.log.append(("observe", req_id, list(accepted_ids), info.root_token if info else None))

    def stop(self, req_id):
        self.log.append(("stop", req_id))

    def propose(self, batch, budget):
        if self.options.fail:
            raise RuntimeError("boom")
        return [DraftTree.chain(list(range(100, 100 + 20))) for _ in batch]


register("recording_for_tests", f"{__name__}:RecordingProposer")


def make(fail=False, k=4, max_len=64, controller="off"):
    # bookkeeping tests draft up to the cap; the goodput controller is pinned separately below
    cfg = SpecplugConfig(method="recording_for_tests", num_speculative_tokens=k, controller=controller,
                         recording_for_tests={"fail": fail})
    vc = SimpleNamespace(additional_config={"specplug": cfg.to_dict()},
                         speculative_config=SimpleNamespace(num_speculative_tokens=k),
                         model_config=SimpleNamespace(max_model_len=max_len, model="/fake-target",
                                                      get_vocab_size=lambda: 1000))
    p = SpecplugProposer(vc)
    RecordingProposer.log = p.proposer.log = []
    return p


def step(p, req_ids, tokens, sampled, new=(), finished=()):
    width = 64
    tok = np.zeros((len(req_ids), width), np.int64)
    for i, t in enumerate(tokens):
        tok[i, : len(t)] = t
    batch = SimpleNamespace(req_ids=list(req_ids), num_prompt_tokens=np.array([2] * len(req_ids)))
    sched = SimpleNamespace(scheduled_new_reqs=[SimpleNamespace(req_id=r, prompt_token_ids=pr) for r, pr in new],
                            finished_req_ids=set(finished), num_spec_tokens_to_schedule=0)
    p.bind_step(batch, sched)
    return p.propose(sampled, np.array([len(t) for t in tokens]), tok)


def test_rows_map_to_request_ids_across_reordering():
    p = make()
    step(p, ["a", "b"], [[1, 2, 7], [3, 4, 8]], [[7], [8]], new=[("a", [1, 2]), ("b", [3, 4])])
    out = step(p, ["b", "a"], [[3, 4, 8, 9], [1, 2, 7, 5]], [[9], [5]])  # rows swapped
    assert out == [[100, 101, 102, 103]] * 2
    obs = [e for e in p.proposer.log if e[0] == "observe"]
    assert obs[-2:] == [("observe", "b", [9], 8), ("observe", "a", [5], 7)]


def test_finished_and_reused_ids_restart_state():
    p = make()
    step(p, ["a"], [[1, 2, 7]], [[7]], new=[("a", [1, 2])])
    step(p, [], [], [], finished=["a"])
    step(p, ["a"], [[5, 6, 9]], [[9]], new=[("a", [5, 6])])  # same id, new request
    kinds = [(e[0], e[1]) for e in p.proposer.log if e[0] in ("start", "stop")]
    assert kinds == [("start", "a"), ("stop", "a"), ("start", "a")]


def test_prefill_chunks_and_max_model_len_are_respected():
    p = make(k=8, max_len=12)
    out = step(p, ["a", "b"], [[1, 2], [3, 4] + [5] * 7], [[], [5]], new=[("a", [1, 2]), ("b", [3, 4])])
    assert out[0] == []  # prefill chunk: nothing sampled, nothing drafted
    assert len(out[1]) == 12 - 9 - 1  # clamp: max_model_len - num_tokens - 1


def test_a_raising_proposer_drafts_nothing_and_the_step_goes_on():
    p = make(fail=True)
    out = step(p, ["a"], [[1, 2, 7]], [[7]], new=[("a", [1, 2])])
    assert out == [[]]
    assert step(p, ["a"], [[1, 2, 7, 8]], [[8]]) == [[]]  # still alive next step


def test_controller_budget_zero_sends_nothing_but_keeps_a_shadow_draft():
    p = make(controller="goodput")
    p.planner.controller.plan = lambda req_ids, fixed_seconds=0.0: {r: 0 for r in req_ids}
    out = step(p, ["a"], [[1, 2, 7]], [[7]], new=[("a", [1, 2])])
    assert out == [[]]  # budget 0: vLLM verifies nothing extra
    assert p.planner._last["a"] == ([100], False)  # one unsent token to learn acceptance from
    step(p, ["a"], [[1, 2, 7, 100]], [[100]])  # the target produced the shadow token
    assert p.planner.controller.acceptance.alpha("a") > 0.5


def test_controller_off_always_drafts_up_to_the_cap():
    cfg = SpecplugConfig(method="recording_for_tests", num_speculative_tokens=3, controller="off")
    assert cfg.to_dict()["controller"] == "off"
    assert SpecplugConfig.from_dict({"method": "suffix", "controller": False}).controller == "off"  # YAML `off`
    p = make(k=3)
    assert not p.planner.enabled
    assert step(p, ["a"], [[1, 2, 7]], [[7]], new=[("a", [1, 2])]) == [[100, 101, 102]]
