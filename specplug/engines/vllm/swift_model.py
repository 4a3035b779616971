"""swift's drafter driven by the engine's own model modules: SWIFT drafts with the target's
weights (the proposer gets the target model from vLLM's ``load_model``), so nothing is copied.

Each sub-layer is vLLM's own module called on its own, exactly as vLLM's Llama forward calls
it (norm, fused q/k/v projection, RoPE, output projection, MLP), with vLLM's CPU kernels and
the served dtype. Attention is not vLLM's: it runs in specplug's ``SkipDecoder`` against the
proposer's own cache (the committed tokens' keys and values read from the paged cache, plus
this step's draft tokens), so no attention metadata, forward context or KV slot is touched.

Supported: vLLM's LlamaForCausalLM layout (``model.layers[i]`` with ``input_layernorm``,
``self_attn.{qkv_proj, rotary_emb, o_proj}``, ``post_attention_layernorm``, ``mlp``), one
tensor-parallel rank. Anything else raises ``EngineModelUnsupported`` naming what is missing,
and the proposer loads its own copy of the weights instead (logged).
"""

from __future__ import annotations

import torch

from specplug.proposers.layer_skip_lm import SkipDecoder


class EngineModelUnsupported(RuntimeError):
    pass


def _need(obj, path: str):
    for part in path.split("."):
        if not hasattr(obj, part):
            raise EngineModelUnsupported(f"{type(obj).__name__} has no {part!r} (needed: {path})")
        obj = getattr(obj, part)
    return obj


class EngineSkipDecoder(SkipDecoder):
    def __init__(self, model, vocab_size: int, max_positions: int):
        import vllm

        try:
            self.layers = list(_need(model, "model.layers"))
            for i, L in enumerate(self.layers):
                for path in ("input_layernorm", "post_attention_layernorm", "self_attn.qkv_proj", "self_attn.rotary_emb",
                             "self_attn.o_proj", "self_attn.q_size", "self_attn.kv_size", "self_attn.num_heads",
                             "self_attn.num_kv_heads", "self_attn.head_dim", "mlp"):
                    _need(L, path)
            self.embed, self.norm = _need(model, "model.embed_tokens"), _need(model, "model.norm")
            self.compute_logits = _need(model, "compute_logits")
        except EngineModelUnsupported as e:
            raise EngineModelUnsupported(f"{type(model).__name__} in vLLM {vllm.__version__}: {e}") from None
        at = self.layers[0].self_attn
        if getattr(at, "total_num_heads", at.num_heads) != at.num_heads:
            raise EngineModelUnsupported(f"{at.num_heads} of {at.total_num_heads} heads on this rank (tensor "
                                         "parallel; needs one rank)")
        self.num_layers = len(self.layers)
        self.num_heads, self.num_kv, self.head_dim = int(at.num_heads), int(at.num_kv_heads), int(at.head_dim)
        self.vocab_size, self.max_positions = int(vocab_size), int(max_positions)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        if self.device.type != "cpu":
            raise EngineModelUnsupported(f"the model is on {self.device} (the drafter runs on the CPU in this version)")

    def _embed(self, ids):
        return self.embed(torch.tensor(ids, device=self.device))

    def _qkv(self, i, h, positions):
        at, n = self.layers[i].self_attn, h.shape[0]
        qkv, _ = at.qkv_proj(self.layers[i].input_layernorm(h))
        q, k, v = qkv.split([at.q_size, at.kv_size, at.kv_size], dim=-1)
        q, k = at.rotary_emb(positions.to(self.device), q, k)
        D = self.head_dim
        return tuple(x.reshape(n, -1, D).transpose(0, 1).float() for x in (q, k, v))

    def _attn_out(self, i, att):
        out, _ = self.layers[i].self_attn.o_proj(att.to(self.dtype))
        return out

    def _mlp(self, i, h):
        return self.layers[i].mlp(self.layers[i].post_attention_layernorm(h))

    def _logits(self, h):
        return self.compute_logits(self.norm(h)).float()
