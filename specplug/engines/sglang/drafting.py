"""The draft source behind specplug's SGLang worker (engine-free: no sglang import).

SGLang's NGRAM worker asks, once per decode round, for a fixed-width tree per request in the
NGRAM layout (layout.py). This class turns each request's token history into that layout with a
specplug proposer, keeping the proposer's per-request lifecycle:
- a request id seen for the first time -> ``proposer.start`` with its prompt;
- tokens that appeared since the last round (accepted drafts + bonus) -> ``proposer.observe``;
- ids SGLang reports gone (``erase``) -> ``proposer.stop``.
Committed tokens are read off the history rather than off verify results, so the same code is
right in SGLang's synchronous and overlap modes (overlap splices the last round's accepted tokens
onto the history before drafting; a round later they are part of the request's output).

Each request's history is kept here in a growing buffer: a round reads only the tokens it has
not seen (O(new tokens), not O(context) per request per round).
"""

from __future__ import annotations

import logging

import numpy as np

from specplug.config import SpecplugConfig
from specplug.engines.sglang.layout import layout_batch
from specplug.proposers.base import Budget, ReqState, VerifyInfo
from specplug.tree import DraftTree

logger = logging.getLogger("sglang.specplug")
_NO_TREE = DraftTree.empty()  # SGLang's result reaches the proposer as committed tokens only


class _History:
    __slots__ = ("buf", "size", "num_prompt")

    def __init__(self, tokens: list[int], num_prompt: int):
        self.buf = np.empty(max(64, 2 * len(tokens)), np.int64)
        self.buf[: len(tokens)] = tokens
        self.size, self.num_prompt = len(tokens), num_prompt

    def extend(self, tokens: list[int]) -> None:
        end = self.size + len(tokens)
        if end > len(self.buf):
            self.buf = np.concatenate([self.buf[: self.size], np.empty(max(end, 2 * len(self.buf)), np.int64)])
        self.buf[self.size : end] = tokens
        self.size = end

    def view(self) -> np.ndarray:
        return self.buf[: self.size]


def _history_from(start: int, prompt, output, spliced) -> list[int]:
    """``(prompt + output + spliced)[start:]`` without building the whole concatenation."""
    n_p, n_o = len(prompt), len(output)
    out: list[int] = []
    if start < n_p:
        out.extend(int(t) for t in prompt[start:])
        start = n_p
    if start < n_p + n_o:
        out.extend(int(t) for t in output[start - n_p :])
        start = n_p + n_o
    out.extend(int(t) for t in spliced[start - n_p - n_o :])
    return out


class DraftSource:
    def __init__(self, config: SpecplugConfig, width: int):
        if width < 2:
            raise ValueError(f"--speculative-num-draft-tokens must be >= 2 for drafting (got {width})")
        self.config = config
        self.width = width
        self.proposer = config.build_proposer()
        self._hist: dict[str, _History] = {}
        self._failed_once = False

    def draft(self, req_ids, prompts, outputs, spliced=None) -> tuple[np.ndarray, np.ndarray]:
        """Request i's history is ``prompts[i] + outputs[i] + spliced[i]`` (spliced: tokens accepted
        last round that ``outputs`` does not hold yet, overlap mode); its last token is node 0.
        Returns ``(tokens int64[bs*width], mask int64[bs*width*width])``."""
        batch, roots = [], []
        for i, rid in enumerate(req_ids):
            extra = spliced[i] if spliced is not None else ()
            hist = self._sync(rid, prompts[i], outputs[i], extra)
            batch.append(ReqState(rid, hist.view(), hist.num_prompt))
            roots.append(int(hist.buf[hist.size - 1]))
        budgets = [Budget(self.width - 1, tree=self.config.tree)] * len(batch)
        try:
            trees = self.proposer.propose(batch, budgets) if batch else []
        except Exception:  # drafting is an optimisation: an empty tree verifies the bonus token only
            if not self._failed_once:
                logger.exception("specplug: %s proposer raised; drafting nothing this round "
                                 "(further failures are not logged)", self.config.method)
                self._failed_once = True
            trees = [_NO_TREE] * len(batch)
        trees = [self._fit(t) for t in trees]
        return layout_batch(roots, trees, self.width)

    def _fit(self, tree: DraftTree) -> DraftTree:
        if not self.config.tree:
            return DraftTree.chain(tree.chain_tokens()[: self.width - 1])
        if tree.num_nodes > self.width - 1:  # parents-first: a prefix of the nodes is a tree
            return tree.subtree(range(self.width - 1))
        return tree

    def _sync(self, rid: str, prompt, output, spliced) -> _History:
        total = len(prompt) + len(output) + len(spliced)
        if total == 0:
            raise ValueError(f"request {rid}: empty history (node 0 needs the last token)")
        hist = self._hist.get(rid)
        if hist is not None and total < hist.size:  # history shrank (retracted, or an id reused)
            self.proposer.stop(rid)
            hist = None
        if hist is None:
            n_prompt = len(prompt)
            hist = self._hist[rid] = _History(_history_from(0, prompt, output, spliced), n_prompt)
            self.proposer.start(rid, hist.buf[:n_prompt].tolist())
            new_from = n_prompt
        else:
            new_from = hist.size
            if total > hist.size:
                hist.extend(_history_from(hist.size, prompt, output, spliced))
        if hist.size > new_from:
            root = int(hist.buf[new_from - 1]) if new_from > 0 else None
            self.proposer.observe(rid, hist.buf[new_from : hist.size].tolist(),
                                  VerifyInfo(_NO_TREE, [], None, root_token=root))
        return hist

    def erase(self, req_ids) -> None:
        for rid in req_ids:
            if self._hist.pop(rid, None) is not None:
                self.proposer.stop(rid)

    def reset(self) -> None:
        self.erase(list(self._hist))
