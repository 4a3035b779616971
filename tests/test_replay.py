"""Trace replay: hand-computed tau on tiny traces, and the CLI on the shipped traces."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from specplug.proposers.base import VerifyInfo
from specplug.replay.simulate import replay
from specplug.replay.traces import Trace, load_traces
from specplug.tree import DraftTree


class ScriptedDrafter:
    """Drafts a fixed guess at each step, to check the replay arithmetic by hand."""

    label = "scripted"

    def __init__(self, guesses):
        self.guesses = list(guesses)
        self.observed = []

    def start(self, rid, prompt):
        pass

    def draft(self, rid, context, num_prompt, k):
        g = self.guesses.pop(0) if self.guesses else []
        return DraftTree.from_paths(g) if g and isinstance(g[0], list) else DraftTree.chain(g)

    def observe(self, rid, emitted, info: VerifyInfo):
        self.observed.append(list(emitted))

    def stop(self, rid):
        pass


def test_tau_by_hand():
    # output 10 11 12 13 14 15
    # step 1: chain [10, 11, 99] -> accept 10, 11 + bonus 12          (3 tokens)
    # step 2: tree {[13, 14], [20]} -> accept 13, 14 + bonus 15       (3 tokens)
    tr = Trace([1, 2], [10, 11, 12, 13, 14, 15])
    d = ScriptedDrafter([[10, 11, 99], [[20], [13, 14]]])
    r = replay(d, [tr], k=8)
    assert d.observed == [[10, 11, 12], [13, 14, 15]]
    assert r.overall.steps == 2 and r.overall.tokens == 6 and r.overall.tau == 3.0
    assert r.overall.draft_nodes == 3 + 3


def test_no_drafts_gives_tau_one():
    r = replay(ScriptedDrafter([]), [Trace([1], [5, 6, 7, 8])], k=4)
    assert r.overall.tau == 1.0 and r.overall.steps == 4


def test_shipped_traces_load():
    traces = load_traces()
    assert len(traces) == 48 and all(t.topk is not None for t in traces)
    assert all(len(t.topk) == len(t.output_ids) for t in traces)


def test_cli_table_and_json(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "specplug.cli", "replay", "--methods", "suffix-tree", "suffix-path",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "| specplug suffix-tree |" in p.stdout
    data = json.loads(out.read_text())
    assert data["specplug suffix-tree"]["tau"] > 1.2  # real traces repeat themselves


def test_cache_stress_stays_under_cap():
    p = subprocess.run([sys.executable, "-m", "specplug.cli", "replay", "--cache-stress", "400",
                        "--cache-bytes", "2000000"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "UNDER cap" in p.stdout
