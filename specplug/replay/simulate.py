"""Replay a greedy trace through a drafter exactly as a greedy engine would: draft from the
context, accept the longest tree path that matches the target's output, emit the accepted tokens
plus the bonus token, feed them back, repeat.

What replay measures: tau (tokens per target forward, incl. the bonus), draft nodes per step
(the verify work a tree adds), the drafter's own time per step, and its bookkeeping (start,
observe, stop: paid for every request, drafting or not) per output token. What it cannot measure:
the target forward's time (and so wall-clock speedup), tree-attention cost, and, for Token
Recycling, the target's top-k at rejected tree nodes: a trace only has the top-k of the positions
the target actually produced, so recycling learns from the accepted path's rows only (this
understates it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from specplug.proposers.base import VerifyInfo
from specplug.replay.traces import Trace
from specplug.tree import PAD_TOKEN


@dataclass
class Stats:
    steps: int = 0
    tokens: int = 0
    draft_nodes: int = 0
    draft_seconds: float = 0.0
    bookkeeping_seconds: float = 0.0  # start + observe + stop: paid per request whether it drafts or not

    @property
    def tau(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    def add(self, o: "Stats") -> None:
        self.steps += o.steps
        self.tokens += o.tokens
        self.draft_nodes += o.draft_nodes
        self.draft_seconds += o.draft_seconds
        self.bookkeeping_seconds += o.bookkeeping_seconds


@dataclass
class ReplayResult:
    label: str
    overall: Stats = field(default_factory=Stats)
    by_category: dict = field(default_factory=lambda: defaultdict(Stats))


def replay_trace(drafter, trace: Trace, rid: str, k: int) -> Stats:
    st = Stats()
    out, prompt = trace.output_ids, list(trace.prompt_ids)
    t0 = time.perf_counter()
    drafter.start(rid, prompt)
    st.bookkeeping_seconds += time.perf_counter() - t0
    pos = 0
    while pos < len(out):
        context = prompt + out[:pos]
        t0 = time.perf_counter()
        tree = drafter.draft(rid, context, len(prompt), min(k, len(out) - pos - 1) if len(out) - pos > 1 else 0)
        st.draft_seconds += time.perf_counter() - t0
        st.draft_nodes += tree.num_nodes
        # greedy acceptance against the recorded output
        node, accepted = -1, []
        while pos + len(accepted) < len(out):
            want = out[pos + len(accepted)]
            kids = [int(c) for c in tree.children(node) if int(tree.tokens[c]) == want and tree.tokens[c] != PAD_TOKEN]
            if not kids:
                break
            node = kids[0]
            accepted.append(node)
        n_emit = min(len(accepted) + 1, len(out) - pos)
        emitted = out[pos : pos + n_emit]
        topk = None
        if trace.topk is not None:
            # rows we know: the root's (position pos) and the accepted nodes' (positions pos+d)
            kk = len(trace.topk[pos])
            topk = np.full((tree.num_nodes + 1, kk), -1, np.int32)
            topk[0] = trace.topk[pos]
            for d, a in enumerate(accepted, start=1):
                if pos + d < len(out):
                    topk[a + 1] = trace.topk[pos + d]
        t0 = time.perf_counter()
        drafter.observe(rid, emitted, VerifyInfo(tree, accepted, topk, root_token=context[-1]))
        st.bookkeeping_seconds += time.perf_counter() - t0
        st.steps += 1
        st.tokens += n_emit
        pos += n_emit
    t0 = time.perf_counter()
    drafter.stop(rid)
    st.bookkeeping_seconds += time.perf_counter() - t0
    return st


def replay(drafter, traces: list[Trace], k: int, progress=None) -> ReplayResult:
    res = ReplayResult(drafter.label)
    for i, tr in enumerate(traces):
        st = replay_trace(drafter, tr, f"r{i}", k)
        res.overall.add(st)
        res.by_category[tr.category].add(st)
        if progress:
            progress.update(1)
    return res
