"""A small causal draft LM (a transformers folder) run by the proposer itself, one KV cache per
request.

Two implementations of the same three calls (``next_logits``, ``tree_level``, ``end_tree``):
``LeanDraftLM``, the Llama forward written out in torch with preallocated caches
(layer_skip_lm.py), for the architectures it supports, and ``TransformersDraftLM`` for any other.
``load_draft_lm`` picks the first that fits. On the 2-layer zoo draft one draft token took
1.40 ms through transformers, most of it per-call overhead (masks, cache objects), and 0.78 ms
written out (outside the engine, 300 cached tokens; docs/benchmarks.md §9).

The drafter never touches the engine's paged KV: it keeps its own cache of the request's
committed tokens (cropped to the longest prefix still valid when drafts were rejected), so a
wrong draft can never corrupt the target's cache. Tree nodes are appended behind the committed
tokens one *level* per forward, each attending to the committed tokens and its own ancestors
(a custom 4D mask), then dropped again once the tree is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specplug.proposers.drafters import common_prefix

logger = logging.getLogger("vllm.specplug")


@dataclass
class _Seq:
    cache: object  # transformers DynamicCache, or a LayerCache
    tokens: list[int] = field(default_factory=list)  # the committed tokens the cache holds, in order


def _tree_mask(committed: int, past: int, ancestors: list[list[int]]) -> torch.Tensor:
    """[m, past + m], True where tree node i may attend: every committed token, the cache slots of
    its ancestors, and itself (appended at slot past + i)."""
    m = len(ancestors)
    mask = torch.zeros(m, past + m, dtype=torch.bool)
    mask[:, :committed] = True
    for i, anc in enumerate(ancestors):
        if anc:
            mask[i, anc] = True
        mask[i, past + i] = True
    return mask


def load_draft_lm(folder: Path):
    """The lean drafter where its forward supports the folder's config, else transformers'."""
    from specplug.proposers.layer_skip_lm import LayerSkipError, LayerSkipLM

    try:
        LayerSkipLM.read_config(folder)
    except LayerSkipError as e:
        logger.info("specplug: draft model %s runs through transformers (%s)", folder, e)
        return TransformersDraftLM(folder)
    return LeanDraftLM(folder)


def _load(folder: Path):
    """The model in fp32, its weights read in this thread.

    Not ``from_pretrained``: transformers 5 converts weights in a thread pool, and inside a vLLM
    CPU worker (OpenMP threads pinned by vLLM, Intel OpenMP preloaded) a model loaded that way
    made every later *target* step about 3x slower (docs/vllm.md)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors weights")
    # sdpa takes a boolean 4D mask as given (True: may attend), which the tree levels need
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), attn_implementation="sdpa",
                                             dtype=torch.float32)
    state = {}
    for f in files:
        state.update({k: v.to(torch.float32) for k, v in load_file(f).items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model.eval()


class TransformersDraftLM:
    def __init__(self, folder: Path):
        self.model = _load(folder)
        cfg = self.model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        self._seqs: dict[str, _Seq] = {}

    def drop(self, req_id: str) -> None:
        self._seqs.pop(req_id, None)

    def held(self, req_id: str) -> tuple[list[int], int]:
        """The committed tokens cached for the request, and how many positions its cache holds."""
        seq = self._seqs[req_id]
        return seq.tokens, seq.cache.get_seq_length()

    def _cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @staticmethod
    def _crop(seq: _Seq, keep: int) -> None:
        extra = seq.cache.get_seq_length() - keep  # tree nodes of an unfinished draft count too
        if extra > 0:
            seq.cache.crop(-extra)  # negative: remove that many tokens from the end
        del seq.tokens[keep:]

    @torch.no_grad()
    def next_logits(self, req_id: str, tokens: list[int]) -> torch.Tensor:
        """Logits [V] for the token after ``tokens``; afterwards the cache holds exactly ``tokens``."""
        seq = self._seqs.get(req_id)
        if seq is None:
            seq = self._seqs[req_id] = _Seq(self._cache())
        keep = min(common_prefix(seq.tokens, tokens), len(tokens) - 1)  # the last token is always fed
        self._crop(seq, keep)
        new = tokens[keep:]
        # logits of the last position only: over a prompt or a catch-up, the 49152-row head on
        # every position cost SmolLM2's 2-layer drafter twice its layers
        out = self.model(torch.tensor([new]), past_key_values=seq.cache, use_cache=True,
                         position_ids=torch.arange(keep, len(tokens))[None], logits_to_keep=1)
        seq.tokens.extend(new)
        return out.logits[0, -1].float()

    @torch.no_grad()
    def tree_level(self, req_id: str, tokens: list[int], positions: list[int],
                   ancestors: list[list[int]]) -> torch.Tensor:
        """Logits [m, V] after m tree nodes fed in one forward behind the cached tokens.

        ancestors[i]: cache indices (beyond the committed tokens) of node i's tree ancestors,
        i.e. the slots earlier ``tree_level`` calls appended them at. Node i attends to every
        committed token, those ancestors and itself; it is appended at the next free slot."""
        seq = self._seqs[req_id]
        past = seq.cache.get_seq_length()
        mask = _tree_mask(len(seq.tokens), past, ancestors)[None, None]
        out = self.model(torch.tensor([tokens]), past_key_values=seq.cache, use_cache=True,
                         attention_mask=mask, position_ids=torch.tensor([positions]))
        return out.logits[0].float()

    def end_tree(self, req_id: str) -> None:
        """Drop the tree nodes' cache entries: the cache holds the committed tokens again."""
        seq = self._seqs[req_id]
        extra = seq.cache.get_seq_length() - len(seq.tokens)
        if extra > 0:
            seq.cache.crop(-extra)


class LeanDraftLM:
    """``TransformersDraftLM``'s calls on the written-out Llama forward (``LayerSkipLM``, nothing
    skipped): one preallocated ``LayerCache`` per request, tree nodes appended behind the
    committed tokens with an explicit mask and cropped away by ``end_tree``."""

    def __init__(self, folder: Path):
        from specplug.proposers.layer_skip_lm import LayerSkipLM

        self.decoder = LayerSkipLM(folder)
        self.vocab_size = self.decoder.vocab_size
        self.max_positions = self.decoder.max_positions
        self._seqs: dict[str, _Seq] = {}

    def drop(self, req_id: str) -> None:
        self._seqs.pop(req_id, None)

    def held(self, req_id: str) -> tuple[list[int], int]:
        seq = self._seqs[req_id]
        return seq.tokens, seq.cache.length

    def next_logits(self, req_id: str, tokens: list[int]) -> torch.Tensor:
        """Logits [V] for the token after ``tokens``; afterwards the cache holds exactly ``tokens``."""
        return self.next_logits_batch([req_id], [tokens])[0]

    @torch.no_grad()
    def next_logits_batch(self, req_ids: list[str], token_lists: list[list[int]]) -> torch.Tensor:
        """``next_logits`` for several requests, their last tokens in one forward: logits [B, V].
        Each cache is cropped to the longest prefix it still matches (the last token is always
        fed), caught up without the head, then the last tokens run together."""
        caches = []
        for req_id, tokens in zip(req_ids, token_lists):
            seq = self._seqs.get(req_id)
            if seq is None:
                seq = self._seqs[req_id] = _Seq(self.decoder.empty_cache())
            keep = min(common_prefix(seq.tokens, tokens), len(tokens) - 1)
            seq.cache.crop(keep)
            del seq.tokens[keep:]
            if len(tokens) - 1 > keep:
                self.decoder.forward(tokens[keep:-1], keep, seq.cache, logits=False)
            seq.tokens.extend(tokens[keep:])  # the last one is appended by the batched forward
            caches.append(seq.cache)
        return self.decoder.forward_batch([t[-1] for t in token_lists], caches)

    @torch.no_grad()
    def extend_batch(self, req_ids: list[str], tokens: list[int]) -> torch.Tensor:
        """A chain's next node for several requests in one forward (each the child of everything
        its cache holds): logits [B, V]. ``end_chain`` keeps them, ``end_tree`` drops them."""
        return self.decoder.forward_batch(tokens, [self._seqs[r].cache for r in req_ids])

    @torch.no_grad()
    def tree_level(self, req_id: str, tokens: list[int], positions: list[int],
                   ancestors: list[list[int]]) -> torch.Tensor:
        """As ``TransformersDraftLM.tree_level``."""
        seq = self._seqs[req_id]
        past, m = seq.cache.length, len(tokens)
        if m == 1 and positions[0] == past and len(ancestors[0]) == past - len(seq.tokens):
            # a chain's next node: it sees everything cached, at the next position (no mask)
            return self.decoder.forward(tokens, past, seq.cache)
        return self.decoder.forward(tokens, past, seq.cache, positions=positions,
                                    mask=_tree_mask(len(seq.tokens), past, ancestors))

    def end_tree(self, req_id: str) -> None:
        seq = self._seqs[req_id]
        seq.cache.crop(len(seq.tokens))

    def end_chain(self, req_id: str, drafted: list[int]) -> None:
        """Keep a chain's nodes cached as if committed: they sit at their own positions behind the
        committed tokens, so where the target accepts them the next ``next_logits`` feeds only
        the token it added, not the accepted ones again; where it rejects, the cache is cropped
        to the common prefix as always."""
        seq = self._seqs[req_id]
        fed = seq.cache.length - len(seq.tokens)  # the last drafted token is never fed
        seq.tokens.extend(drafted[:fed])
