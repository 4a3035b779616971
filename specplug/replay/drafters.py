"""Drafters replay can drive: specplug proposers, and vLLM's own `ngram` and `suffix` drafting
logic run on the same traces so the ratios are side by side.

- vLLM ngram: vLLM's own numba function `_find_longest_matched_ngram_and_propose_tokens`
  (vllm.v1.spec_decode.ngram_proposer), with vLLM's `prompt_lookup_min/max`.
- vLLM suffix: `arctic_inference.suffix_decoding.SuffixDecodingCache` (what vLLM's `suffix` method
  imports) called exactly as vllm/v1/spec_decode/suffix_decoding.py calls it: pattern = last
  max_tree_depth tokens, path mode, vLLM's defaults.
Either is reported as unavailable (never silently replaced) when its package is missing.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from specplug.proposers.base import Budget, ReqState, VerifyInfo
from specplug.tree import DraftTree


class SpecplugDrafter:
    def __init__(self, label: str, proposer, tree: bool):
        self.label, self.proposer, self.tree = label, proposer, tree

    def start(self, rid, prompt):
        self.proposer.start(rid, prompt)

    def draft(self, rid, context, num_prompt, k) -> DraftTree:
        (t,) = self.proposer.propose([ReqState(rid, np.asarray(context), num_prompt)], [Budget(k, tree=self.tree)])
        return t if self.tree else t.chain_of_best()

    def observe(self, rid, emitted, info: VerifyInfo):
        self.proposer.observe(rid, emitted, info)

    def stop(self, rid):
        self.proposer.stop(rid)


class VllmNgramDrafter:
    label = "vllm ngram"
    tree = False

    def __init__(self, prompt_lookup_min: int = 2, prompt_lookup_max: int = 4, max_model_len: int = 1 << 20):
        from vllm.v1.spec_decode.ngram_proposer import _find_longest_matched_ngram_and_propose_tokens

        self._fn = _find_longest_matched_ngram_and_propose_tokens
        self.min_n, self.max_n, self.max_model_len = prompt_lookup_min, prompt_lookup_max, max_model_len

    def start(self, rid, prompt):
        pass

    def draft(self, rid, context, num_prompt, k) -> DraftTree:
        toks = self._fn(np.asarray(context, dtype=np.int32), self.min_n, self.max_n, self.max_model_len, k)
        return DraftTree.chain(list(toks))

    def observe(self, rid, emitted, info):
        pass

    def stop(self, rid):
        pass


class VllmSuffixDrafter:
    label = "vllm suffix"
    tree = False

    def __init__(self, max_tree_depth: int = 24, max_cached_requests: int = 10000,
                 max_spec_factor: float = 1.0, min_token_prob: float = 0.1):
        from arctic_inference.suffix_decoding import SuffixDecodingCache

        self.cache = SuffixDecodingCache(max_tree_depth=max_tree_depth, max_cached_requests=max_cached_requests)
        self.depth, self.factor, self.min_prob = max_tree_depth, max_spec_factor, min_token_prob

    def start(self, rid, prompt):
        self.cache.start_request(rid, np.asarray(prompt, dtype=np.int32))

    def draft(self, rid, context, num_prompt, k) -> DraftTree:
        pattern = np.asarray(context[-self.depth:], dtype=np.int32)
        d = self.cache.speculate(rid, pattern, max_spec_tokens=k, max_spec_factor=self.factor,
                                 min_token_prob=self.min_prob)
        return DraftTree.chain(list(d.token_ids))

    def observe(self, rid, emitted, info):
        self.cache.add_active_response(rid, list(emitted))

    def stop(self, rid):
        self.cache.stop_request(rid)


def vllm_baselines() -> tuple[list, list[str]]:
    """(drafters, reasons for the ones that could not be built)."""
    out, missing = [], []
    if importlib.util.find_spec("vllm") is not None:
        out.append(VllmNgramDrafter())
    else:
        missing.append("vllm ngram: vLLM is not installed")
    if importlib.util.find_spec("arctic_inference") is not None:
        out.append(VllmSuffixDrafter())
    else:
        missing.append("vllm suffix: arctic-inference is not installed")
    return out, missing
