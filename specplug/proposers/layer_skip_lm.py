"""A Llama decoder whose attention and MLP sub-layers can be skipped per call (SWIFT's drafter;
with nothing skipped, dyspec's draft model: proposers/draft_lm.py).

Written out in torch from the folder's safetensors instead of calling transformers' modules, so
that skipping a sub-layer is one ``if`` and the KV cache is ours (``LayerCache``: per request,
holding the *full* model's keys and values of the committed tokens, as SWIFT drafts against the
target's own cache). Draft tokens append to the layers they run and are cropped away afterwards.
Checked against transformers' LlamaForCausalLM in tests/test_swift.py.

Drafting runs this forward one token at a time, so it is written for few ops per layer: fused
q/k/v and gate/up projections, a RoPE table (one op for q and k together), preallocated cache buffers
(no concatenation of the past) and grouped-query attention without a mask for a single query.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


class LayerSkipError(ValueError):
    pass


def _rope_theta(cfg: dict, folder: Path) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise LayerSkipError(f"swift: {folder}: rope_type {kind!r} is not supported (only 'default' RoPE)")
    return float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0)))


class LayerCache:
    """Keys and values of one sequence for every layer: [kv_heads, capacity, head_dim] buffers
    of which the first ``length`` positions are valid (grown by doubling, never shrunk)."""

    def __init__(self, num_layers: int, num_kv: int, head_dim: int, capacity: int = 256):
        self.k = [torch.zeros(num_kv, capacity, head_dim) for _ in range(num_layers)]
        self.v = [torch.zeros(num_kv, capacity, head_dim) for _ in range(num_layers)]
        self.length = 0

    def reserve(self, n: int) -> None:
        cap = self.k[0].shape[1]
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        for buf in (self.k, self.v):
            for i, old in enumerate(buf):
                new = old.new_zeros(old.shape[0], cap, old.shape[2])
                new[:, : old.shape[1]] = old
                buf[i] = new

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def append(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keys and values ([kv_heads, n, head_dim] per layer) of the next n positions."""
        n = layers[0][0].shape[1]
        self.reserve(self.length + n)
        a, b = self.length, self.length + n
        for i, (k, v) in enumerate(layers):
            self.k[i][:, a:b] = k
            self.v[i][:, a:b] = v
        self.length = b


class SkipDecoder:
    """The layer-skipping forward of a pre-norm decoder over a ``LayerCache``; subclasses supply
    the sub-layers (``_embed``, ``_qkv``, ``_attn_out``, ``_mlp``, ``_logits``): here from the
    folder's weights (LayerSkipLM), or the engine's own modules (engines/vllm/swift_model.py).
    Attention runs here, in float32, against the cache."""

    num_layers: int
    num_heads: int
    num_kv: int
    head_dim: int
    vocab_size: int
    max_positions: int

    def empty_cache(self) -> LayerCache:
        return LayerCache(self.num_layers, self.num_kv, self.head_dim)

    @staticmethod
    def crop(cache: LayerCache, length: int) -> None:
        cache.crop(length)

    def _attend_one(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attention of one query [H, D] over every key [kv_heads, T, D] (grouped-query heads
        share theirs): plain matmuls, which beat sdpa's dispatch for a single row."""
        H, Hkv, D = self.num_heads, self.num_kv, self.head_dim
        w = torch.softmax((q.reshape(Hkv, H // Hkv, D) @ keys.transpose(1, 2)) * D ** -0.5, dim=-1)
        return (w @ values).reshape(H, D)

    @torch.no_grad()
    def forward(self, ids: list[int], start: int, cache: LayerCache, skip_attn=frozenset(), skip_mlp=frozenset(),
                visible: int | None = None, logits: bool = True, positions: list[int] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Logits [n, V] of tokens ``ids`` at positions start.. (causal among themselves).

        The new tokens attend to the first ``visible`` cached positions (default: all, and then
        ``start`` must be ``cache.length``) and each other; their keys and values are written at
        positions cache.length.. of the layers that run attention, and cache.length grows by n
        (``crop`` removes them again). ``logits=False`` only fills the cache: the 49152-row head
        of SmolLM2 costs as much as a tenth of its layers.

        Tree nodes (dyspec's levels): ``mask`` [n, cache.length + n] (True: may attend) says which
        cached slots and new tokens each new token sees, and ``positions`` gives their RoPE
        positions (``start`` is then ignored)."""
        n = len(ids)
        past = cache.length if visible is None else visible
        if mask is not None:
            if visible is not None or positions is None or tuple(mask.shape) != (n, cache.length + n):
                raise ValueError(f"a mask needs positions, all of the cache visible and shape ({n}, "
                                 f"{cache.length + n}); got {tuple(mask.shape)}")
        elif visible is None and start != cache.length:
            raise ValueError(f"forward at position {start} but the cache holds {cache.length} positions")
        cache.reserve(cache.length + n)
        a, b = cache.length, cache.length + n
        H, Hkv, D = self.num_heads, self.num_kv, self.head_dim
        if mask is None and n > 1:  # causal among the new tokens, all of the visible past
            mask = torch.ones(n, past + n, dtype=torch.bool)
            mask[:, past:] = torch.ones(n, n, dtype=torch.bool).tril()
        h = self._embed(ids)
        positions = torch.arange(start, start + n) if positions is None else torch.tensor(positions)
        for i in range(self.num_layers):
            if i not in skip_attn:
                q, k, v = self._qkv(i, h, positions)  # float32 [heads, n, D], keys after RoPE
                cache.k[i][:, a:b], cache.v[i][:, a:b] = k, v
                if visible is None:
                    keys, values = cache.k[i][:, :b], cache.v[i][:, :b]
                else:
                    keys = torch.cat([cache.k[i][:, :visible], k], dim=1)
                    values = torch.cat([cache.v[i][:, :visible], v], dim=1)
                if mask is None:  # one token
                    att = self._attend_one(q[:, 0], keys, values).view(H, 1, D)
                else:
                    att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=H != Hkv)
                h = h + self._attn_out(i, att.transpose(0, 1).reshape(n, H * D))
            if i not in skip_mlp:
                h = h + self._mlp(i, h)
        cache.length = b
        return self._logits(h) if logits else None

    @torch.no_grad()
    def forward_batch(self, ids: list[int], caches: list[LayerCache], skip_attn=frozenset(),
                      skip_mlp=frozenset()) -> torch.Tensor:
        """Logits [B, V]: one new token per sequence, each at the next position of its own cache
        (appended to it, as ``forward`` does). The projections and MLPs run once for the batch (on
        a memory-bound CPU a one-row and a B-row matmul cost about the same); attention runs per
        sequence against its own cache."""
        B, H, D = len(ids), self.num_heads, self.head_dim
        ends = [c.length + 1 for c in caches]
        for c, e in zip(caches, ends):
            c.reserve(e)
        h = self._embed(ids)
        positions = torch.tensor([e - 1 for e in ends])
        for i in range(self.num_layers):
            if i not in skip_attn:
                q, k, v = self._qkv(i, h, positions)  # [heads, B, D]
                att = torch.empty(B, H, D)
                for j, (c, e) in enumerate(zip(caches, ends)):
                    c.k[i][:, e - 1], c.v[i][:, e - 1] = k[:, j], v[:, j]
                    att[j] = self._attend_one(q[:, j], c.k[i][:, :e], c.v[i][:, :e])
                h = h + self._attn_out(i, att.view(B, H * D))
            if i not in skip_mlp:
                h = h + self._mlp(i, h)
        for c, e in zip(caches, ends):
            c.length = e
        return self._logits(h)


class LayerSkipLM(SkipDecoder):
    """The decoder from a transformers Llama folder's safetensors, in fp32 (a second copy)."""

    @staticmethod
    def read_config(folder: Path) -> dict:
        """The folder's config.json, refused (naming the key) where this forward does not fit it."""
        cfg = json.loads((folder / "config.json").read_text())
        arch = (cfg.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise LayerSkipError(f"swift: {folder}: architecture {arch} is not supported ({', '.join(SUPPORTED_ARCHITECTURES)})")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise LayerSkipError(f"swift: {folder}: {key}: true is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise LayerSkipError(f"swift: {folder}: hidden_act {cfg['hidden_act']!r} is not supported")
        _rope_theta(cfg, folder)
        return cfg

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        cfg = self.read_config(folder)
        self.num_layers = int(cfg["num_hidden_layers"])
        self.num_heads = int(cfg["num_attention_heads"])
        self.num_kv = int(cfg.get("num_key_value_heads", self.num_heads))
        self.head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // self.num_heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.vocab_size = int(cfg["vocab_size"])
        self.max_positions = int(cfg.get("max_position_embeddings", 1 << 30))
        theta = _rope_theta(cfg, folder)
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        self._cos = self._sin = torch.zeros(0, self.head_dim)
        w: dict[str, torch.Tensor] = {}
        for f in sorted(folder.glob("*.safetensors")):
            w.update({k: v.to(torch.float32) for k, v in load_file(f).items()})
        if not w:
            raise LayerSkipError(f"swift: {folder}: no *.safetensors weights")
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = w.get("lm_head.weight", self.embed)
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            g = lambda k: w.pop(p + k)  # noqa: E731  (fused below: the unfused copies are dropped)
            self.layers.append({
                "ln1": g("input_layernorm.weight"), "ln2": g("post_attention_layernorm.weight"),
                "qkv": torch.cat([g("self_attn.q_proj.weight"), g("self_attn.k_proj.weight"), g("self_attn.v_proj.weight")]),
                "o": g("self_attn.o_proj.weight"),
                "gate_up": torch.cat([g("mlp.gate_proj.weight"), g("mlp.up_proj.weight")]),
                "down": g("mlp.down_proj.weight")})

    def _rope(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables [end', head_dim] covering positions < end (grown on demand)."""
        if self._cos.shape[0] < end:
            n = max(end, 2 * self._cos.shape[0], 256)
            ang = torch.arange(n, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
            self._cos = torch.cat([ang.cos(), ang.cos()], dim=-1)
            self._sin = torch.cat([-ang.sin(), ang.sin()], dim=-1)  # rotate_half's sign
        return self._cos, self._sin

    def _rms(self, x, weight):
        # written out: torch's fused rms_norm was 3x slower for one row on the reference CPU
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    @staticmethod
    def _rotate(x, cos, sin):
        """RoPE, rotate-half form: x * cos + (-x2, x1) * sin, with the sign folded into ``sin``."""
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin

    def _embed(self, ids):
        return self.embed[torch.tensor(ids)]

    def _qkv(self, i, h, positions):
        L, n = self.layers[i], h.shape[0]
        H, Hkv, D = self.num_heads, self.num_kv, self.head_dim
        cos, sin = self._rope(int(positions.max()) + 1)
        cos, sin = cos[positions], sin[positions]
        qkv = F.linear(self._rms(h, L["ln1"]), L["qkv"]).view(n, H + 2 * Hkv, D).transpose(0, 1)
        q, k = self._rotate(qkv[: H + Hkv], cos, sin).split([H, Hkv])  # one RoPE op for q and k
        return q, k, qkv[H + Hkv :]

    def _attn_out(self, i, att):
        return F.linear(att, self.layers[i]["o"])

    def _mlp(self, i, h):
        L = self.layers[i]
        gate, up = F.linear(self._rms(h, L["ln2"]), L["gate_up"]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, L["down"])

    def _logits(self, h):
        return F.linear(self._rms(h, self.norm), self.lm_head)
