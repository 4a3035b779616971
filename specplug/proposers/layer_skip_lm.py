"""A Llama decoder whose attention and MLP sub-layers can be skipped per call (SWIFT's drafter).

Written out in torch from the folder's safetensors instead of calling transformers' modules, so
that skipping a sub-layer is one ``if`` and the KV cache is ours: one (k, v) per layer, kept per
request, holding the *full* model's keys and values of the committed tokens (as SWIFT drafts
against the target's own cache). Draft tokens append to the layers they run and are cropped
away afterwards. Checked against transformers' LlamaForCausalLM in tests/test_swift.py.
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


class LayerSkipLM:
    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        cfg = json.loads((folder / "config.json").read_text())
        arch = (cfg.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise LayerSkipError(f"swift: {folder}: architecture {arch} is not supported ({', '.join(SUPPORTED_ARCHITECTURES)})")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise LayerSkipError(f"swift: {folder}: {key}: true is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise LayerSkipError(f"swift: {folder}: hidden_act {cfg['hidden_act']!r} is not supported")
        self.num_layers = int(cfg["num_hidden_layers"])
        self.num_heads = int(cfg["num_attention_heads"])
        self.num_kv = int(cfg.get("num_key_value_heads", self.num_heads))
        self.head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // self.num_heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.vocab_size = int(cfg["vocab_size"])
        self.max_positions = int(cfg.get("max_position_embeddings", 1 << 30))
        theta = _rope_theta(cfg, folder)
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
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
            self.layers.append({n: w[p + k] for n, k in (
                ("ln1", "input_layernorm.weight"), ("ln2", "post_attention_layernorm.weight"),
                ("q", "self_attn.q_proj.weight"), ("k", "self_attn.k_proj.weight"), ("v", "self_attn.v_proj.weight"),
                ("o", "self_attn.o_proj.weight"), ("gate", "mlp.gate_proj.weight"), ("up", "mlp.up_proj.weight"),
                ("down", "mlp.down_proj.weight"))})

    def _rms(self, x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rotate(self, x, positions):
        ang = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def empty_cache(self) -> list[list[torch.Tensor]]:
        z = torch.zeros(self.num_kv, 0, self.head_dim)
        return [[z, z] for _ in range(self.num_layers)]

    @torch.no_grad()
    def forward(self, ids: list[int], start: int, cache, skip_attn=frozenset(), skip_mlp=frozenset(),
                visible: int | None = None, logits: bool = True) -> torch.Tensor | None:
        """Logits [n, V] of tokens ``ids`` at positions start.. (causal among themselves).

        ``cache``: per layer [k, v] of shape [kv_heads, T, head_dim]; each layer that runs its
        attention appends this call's keys and values to it (crop with ``crop``). ``visible``: how
        many cached tokens the new ones attend to (default: all). ``logits=False`` only fills the
        cache: the 49152-row head would cost as much as a tenth of the layers."""
        n = len(ids)
        positions = torch.arange(start, start + n)
        h = self.embed[torch.tensor(ids)]
        for i, L in enumerate(self.layers):
            if i not in skip_attn:
                x = self._rms(h, L["ln1"])
                q = (x @ L["q"].T).view(n, self.num_heads, self.head_dim).transpose(0, 1)
                k = (x @ L["k"].T).view(n, self.num_kv, self.head_dim).transpose(0, 1)
                v = (x @ L["v"].T).view(n, self.num_kv, self.head_dim).transpose(0, 1)
                q, k = self._rotate(q, positions), self._rotate(k, positions)
                past_k, past_v = cache[i]
                if visible is not None:
                    past_k, past_v = past_k[:, :visible], past_v[:, :visible]
                keys, values = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
                cache[i] = [torch.cat([cache[i][0], k], dim=1), torch.cat([cache[i][1], v], dim=1)]
                P = keys.shape[1] - n
                mask = torch.ones(n, P + n, dtype=torch.bool)
                mask[:, P:] = torch.ones(n, n, dtype=torch.bool).tril()
                rep = self.num_heads // self.num_kv
                a = F.scaled_dot_product_attention(q, keys.repeat_interleave(rep, 0), values.repeat_interleave(rep, 0),
                                                   attn_mask=mask)
                h = h + a.transpose(0, 1).reshape(n, -1) @ L["o"].T
            if i not in skip_mlp:
                x = self._rms(h, L["ln2"])
                h = h + (F.silu(x @ L["gate"].T) * (x @ L["up"].T)) @ L["down"].T
        return self._rms(h, self.norm) @ self.lm_head.T if logits else None

    @staticmethod
    def crop(cache, length: int) -> None:
        for layer in cache:
            layer[0], layer[1] = layer[0][:, :length], layer[1][:, :length]
