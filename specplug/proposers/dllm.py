"""dLLM block drafting: a block-diffusion drafter fills k masked positions after the committed
tokens in a few parallel denoising steps (reference/methods.md §6b; the drafter is
specplug/zoo/diffusion.py, causal over the prefix and bidirectional inside the block).

Per step and request:
1. the drafter's prefix cache is cropped to the longest prefix of the committed tokens it still
   matches (the accepted length) and extended with the tokens committed since;
2. ``fill_block`` denoises k = min(budget, ``block_size``) masked positions: each denoising step
   commits every position whose top probability is >= ``threshold``, and at least the most
   confident one; after ``max_steps`` steps the rest are committed;
3. the block is the draft chain.

A diffusion drafter's per-position probabilities are conditioned on the other drafted positions,
so they are not a proposal distribution for rejection sampling: drafts are deterministic and
verified by matching (greedy, or sample-and-match at temperature > 0), which is exact.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.proposers.drafters import (DrafterError, TargetInfo, check_same_tokenizer, common_prefix,
                                         resolve_drafter)
from specplug.tree import DraftTree


class DllmOptions(ProposerOptions):
    draft_model: str = Field(..., description="block-diffusion drafter folder (drafter_config.json), or zoo-dllm")
    block_size: int | None = Field(None, ge=1, le=64, description="positions drafted per step (None: the drafter's block)")
    max_steps: int = Field(4, ge=1, le=64, description="denoising steps per block")
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="commit every position at least this confident")


class DllmProposer(Proposer):
    name = "dllm"
    Options = DllmOptions

    def __init__(self, options: DllmOptions, num_speculative_tokens: int):
        super().__init__(options, num_speculative_tokens)
        from specplug.zoo.shipped import DRAFTER_CONFIG, load_drafter

        self.folder = resolve_drafter(options.draft_model, "dllm.draft_model")
        if not (self.folder / DRAFTER_CONFIG).is_file():
            raise DrafterError(f"dllm.draft_model: {self.folder} has no {DRAFTER_CONFIG}: not a block-diffusion "
                               "drafter (train one with `specplug zoo build --only dllm`)")
        self.model = load_drafter(self.folder)
        self.block = options.block_size or self.model.config.block_size
        self._caches: dict[str, tuple[list, list[int]]] = {}  # req_id -> (per-layer (k, v), tokens)

    def bind_target(self, target: TargetInfo) -> None:
        check_same_tokenizer(self.folder, self.model.config.vocab_size, target, "dllm.draft_model")

    def start(self, req_id: str, prompt_ids, tenant: str | None = None) -> None:
        self._caches.pop(req_id, None)

    def stop(self, req_id: str) -> None:
        self._caches.pop(req_id, None)

    def observe(self, req_id: str, accepted_ids, info: VerifyInfo | None = None) -> None:
        pass  # the next propose() sees the committed tokens and crops the cache to them

    def _prefix_cache(self, req_id: str, tokens: list[int]):
        import torch

        from specplug.zoo.diffusion import crop

        cache, cached = self._caches.get(req_id, (None, []))
        keep = common_prefix(cached, tokens)
        if cache is None or keep == 0:
            cache = self.model.encode_prefix(torch.tensor([tokens]))
        else:
            cache = crop(cache, keep)
            if keep < len(tokens):
                cache = self.model.extend_prefix(cache, torch.tensor([tokens[keep:]]))
        self._caches[req_id] = (cache, list(tokens))
        return cache

    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        import torch

        from specplug.zoo.diffusion import fill_block

        out = []
        o = self.options
        for r, b in zip(batch, budget):
            k = min(b.max_nodes, self.num_speculative_tokens, self.block)
            if k <= 0:
                out.append(DraftTree.empty())
                continue
            with torch.no_grad():
                cache = self._prefix_cache(r.req_id, [int(t) for t in r.token_ids])
                block, conf, _ = fill_block(self.model, cache, k, o.max_steps, o.threshold)
            out.append(DraftTree.chain(block.numpy().astype(np.int64), scores=conf.numpy()))
        return out
