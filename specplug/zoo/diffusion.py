"""A small block-diffusion drafter: fills a block of k masked positions after a prefix in a few
parallel denoising steps (the drafter of the `dllm` method; docs/models.md).

Attention is causal over the clean prefix and bidirectional inside the block being filled
(block diffusion, as in BD3-LM, arXiv 2503.09573): the prefix is encoded once, causally, so its
keys and values are a cache that can be cropped to any accepted length; the block attends to
the whole prefix and to itself.

Training sees the same structure for every block of a sequence at once: the input is
[noised copy ; clean copy] of a window of L tokens (both with positions 0..L-1). Clean tokens
attend causally to clean tokens; noised block b attends to the clean tokens before it and to
its own noised tokens. Each block masks a uniformly drawn fraction of its positions (at least
one); the loss is cross-entropy at the masked positions (MDLM, arXiv 2406.07524, without the
1/t weight: a drafter cares about the few-mask regime as much as the many-mask one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specplug.zoo.tokenizer import MASK_ID


@dataclass(frozen=True)
class DiffusionConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 768
    block_size: int = 8
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    mask_token_id: int = MASK_ID
    num_kv_heads: int | None = None  # grouped-query attention (None: one kv head per head)
    # A trained mask vector instead of the mask token's embedding row: for a drafter that shares a
    # pretrained target's frozen embedding, where no token means "masked" (specplug/distill).
    learned_mask_embedding: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x [batch, heads, seq, head_dim] at integer ``positions`` [seq]."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float32) / half)
    ang = positions.float()[:, None] * freqs[None, :]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class _Layer(nn.Module):
    def __init__(self, c: DiffusionConfig):
        super().__init__()
        self.c = c
        self.attn_norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.head_dim = c.hidden_size // c.num_heads
        self.kv_heads = c.num_kv_heads or c.num_heads
        self.qkv = nn.Linear(c.hidden_size, (c.num_heads + 2 * self.kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.mlp_norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.gate_up = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, h, positions, mask, past=None):
        """h [b, s, d]; mask [s, s_past + s] (True: may attend); past: (k, v) of earlier tokens.
        Returns (h, (k, v) of this call's tokens)."""
        b, s, d = h.shape
        nh, nkv, hd = self.c.num_heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(self.attn_norm(h)).view(b, s, nh + 2 * nkv, hd).transpose(1, 2).split([nh, nkv, nkv], dim=1)
        q, k = _rope(q, positions, self.c.rope_theta), _rope(k, positions, self.c.rope_theta)
        new = (k, v)  # the cache keeps the kv heads unrepeated
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if nkv != nh:  # kv head j serves query heads j*r .. j*r + r - 1 (Llama's grouping)
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h + self.out(a.transpose(1, 2).reshape(b, s, d))
        gate, up = self.gate_up(self.mlp_norm(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up), new


class BlockDiffusionDrafter(nn.Module):
    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        if config.learned_mask_embedding:
            self.mask_embed = nn.Parameter(torch.zeros(config.hidden_size))

    def _embed(self, ids):
        h = self.embed(ids)
        if self.config.learned_mask_embedding:
            h = torch.where((ids == self.config.mask_token_id)[..., None], self.mask_embed.to(h.dtype), h)
        return h

    def _hidden(self, ids, positions, mask, past=None):
        h = self._embed(ids)
        caches = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, positions, mask, None if past is None else past[i])
            caches.append(kv)
        return self.norm(h), caches

    def head(self, hidden):
        return F.linear(hidden, self.embed.weight)  # tied output head

    def _run(self, ids, positions, mask, past=None):
        h, caches = self._hidden(ids, positions, mask, past)
        return self.head(h), caches

    def causal_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [b, L, V] of the clean, causal path (the prefix encoder as a language model)."""
        L = ids.shape[1]
        return self._run(ids, torch.arange(L), torch.ones(L, L, dtype=torch.bool).tril())[0]

    # --- inference: prefix once (a cache), then the block against it -------------------------
    def encode_prefix(self, prefix: torch.Tensor):
        """prefix [b, P] -> per-layer (k, v) of the prefix, causal. Crop with ``crop``."""
        P = prefix.shape[1]
        mask = torch.ones(P, P, dtype=torch.bool).tril()
        return self._hidden(prefix, torch.arange(P), mask)[1]  # no logits: only the cache is wanted

    def extend_prefix(self, cache, new: torch.Tensor):
        """The prefix cache with ``new`` [b, n] appended (causal); equal to re-encoding it all."""
        P, n = cache[0][0].shape[2], new.shape[1]
        mask = torch.cat([torch.ones(n, P, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()], dim=1)
        added = self._hidden(new, torch.arange(P, P + n), mask, past=cache)[1]
        return [(torch.cat([k0, k1], dim=2), torch.cat([v0, v1], dim=2)) for (k0, v0), (k1, v1) in zip(cache, added)]

    def block_logits(self, cache, block: torch.Tensor) -> torch.Tensor:
        """Logits [b, k, V] for a (partly masked) block right after the cached prefix."""
        P, k = cache[0][0].shape[2], block.shape[1]
        mask = torch.ones(k, P + k, dtype=torch.bool)  # the whole prefix and the whole block
        return self._run(block, torch.arange(P, P + k), mask, past=cache)[0]

    # --- training: every block of a window at once -------------------------------------------
    def training_hidden(self, noised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Final hidden states [b, L, d] of the noised copy, given [noised ; clean] with the mask
        below (apply ``head`` to the positions scored: the LM head dominates a large vocabulary)."""
        L = clean.shape[1]
        ids = torch.cat([noised, clean], dim=1)
        positions = torch.arange(L).repeat(2)
        return self._hidden(ids, positions, training_mask(L, self.config.block_size))[0][:, :L]

    def training_logits(self, noised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Logits [b, L, V] for the noised copy."""
        return self.head(self.training_hidden(noised, clean))


def training_mask(L: int, block: int) -> torch.Tensor:
    """[2L, 2L] boolean: rows/cols 0..L-1 the noised copy, L..2L-1 the clean copy."""
    idx = torch.arange(L)
    blk = idx // block
    noised_to_noised = blk[:, None] == blk[None, :]
    noised_to_clean = idx[None, :] < (blk[:, None] * block)  # clean tokens before the block
    clean_to_clean = idx[None, :] <= idx[:, None]
    top = torch.cat([noised_to_noised, noised_to_clean], dim=1)
    bottom = torch.cat([torch.zeros(L, L, dtype=torch.bool), clean_to_clean], dim=1)
    return torch.cat([top, bottom], dim=0)


def crop(cache, length: int):
    """The prefix cache cut to its first ``length`` tokens (after a partly accepted draft)."""
    return [(k[:, :, :length], v[:, :, :length]) for k, v in cache]


def noise_blocks(clean: torch.Tensor, block: int, gen: torch.Generator,
                 mask_id: int = MASK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """(noised, masked) for a batch of windows: each block masks ceil(t * block) positions,
    t ~ U(0, 1], at random places."""
    b, L = clean.shape
    nblk = L // block
    t = 1.0 - torch.rand(b, nblk, 1, generator=gen)  # (0, 1]
    count = torch.ceil(t * block).clamp(min=1)
    rank = torch.rand(b, nblk, block, generator=gen).argsort(dim=-1).argsort(dim=-1)  # random order
    masked = (rank < count).reshape(b, L)
    return torch.where(masked, torch.full_like(clean, mask_id), clean), masked


def diffusion_loss(model: BlockDiffusionDrafter, clean: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Masked-token loss on windows of ``seq_len + 1`` tokens (the shared batcher's shape; the
    last token is dropped so windows split into whole blocks)."""
    clean = clean[:, : clean.shape[1] - clean.shape[1] % model.config.block_size]
    noised, masked = noise_blocks(clean, model.config.block_size, gen, model.config.mask_token_id)
    logits = model.training_logits(noised, clean)
    return F.cross_entropy(logits[masked].float(), clean[masked])


@torch.no_grad()
def fill_block(model: BlockDiffusionDrafter, cache, k: int, max_steps: int, threshold: float):
    """Denoise k masked positions after the cached prefix (greedy, deterministic drafts).

    Each step commits every masked position whose top probability is >= ``threshold``, and at
    least the single most confident one; the last allowed step commits all that remain.
    Returns (tokens [k], confidences [k], steps used)."""
    mask_id = model.config.mask_token_id
    block = torch.full((1, k), mask_id, dtype=torch.long)
    conf = torch.zeros(k)
    steps = 0
    while bool((block == mask_id).any()):
        steps += 1
        logits = model.block_logits(cache, block)[0].float()
        logits[:, mask_id] = float("-inf")  # a draft never proposes the mask token itself
        probs = logits.softmax(-1)
        p, tok = probs.max(-1)
        open_ = block[0] == mask_id
        take = open_ & (p >= threshold)
        if steps >= max_steps:
            take = open_
        if not bool(take.any()):
            best = torch.where(open_, p, torch.full_like(p, -1.0)).argmax()
            take = torch.zeros_like(open_)
            take[best] = True
        block[0, take] = tok[take]
        conf[take] = p[take]
    return block[0], conf, steps


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
