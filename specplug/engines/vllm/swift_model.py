"""swift's drafter driven by the engine's own model modules: SWIFT drafts with the target's
weights (the proposer gets the target model from vLLM's ``load_model``), so nothing is copied.

Each sub-layer is vLLM's own module called on its own, exactly as vLLM's Llama forward calls
it (norm, fused q/k/v projection, RoPE, output projection, MLP), with vLLM's CPU kernels and
the served dtype. Attention is not vLLM's: it runs in specplug's ``SkipDecoder`` against the
proposer's own cache (the committed tokens' keys and values read from the paged cache, plus
this step's draft tokens), so no attention metadata, forward context or KV slot is touched.

Drafting (``forward_batch``, one token per sequence) has a lean path: the linear layers' own
``quant_method.apply`` (vLLM's prepacked oneDNN GEMM on CPU), vLLM's fused CPU kernels for
RMSNorm with the residual add, SiLU-and-mul and RoPE, and nothing else per sub-layer. On the
zoo target a draft token took 3.1 ms through the modules, almost all of it per-op overhead (the
weights are read in about 0.6 ms), and 2.2 ms this way (docs/benchmarks.md §9). The kernels are
looked up when the decoder is built; where one is missing the modules are called as before
(logged, same drafts up to float rounding). Teacher-forced forwards (the skip-set search,
recomputed keys and values) always call the modules.

Supported: vLLM's LlamaForCausalLM layout (``model.layers[i]`` with ``input_layernorm``,
``self_attn.{qkv_proj, rotary_emb, o_proj}``, ``post_attention_layernorm``, ``mlp``), one
tensor-parallel rank. Anything else raises ``EngineModelUnsupported`` naming what is missing,
and the proposer loads its own copy of the weights instead (logged).
"""

from __future__ import annotations

import logging
import os

import torch

from specplug.proposers.layer_skip_lm import LayerCache, SkipDecoder

logger = logging.getLogger("vllm.specplug")

# vLLM's CPU kernels the lean draft step calls (torch.ops._C.<name>); checked at load time
LEAN_KERNELS = ("rms_norm", "fused_add_rms_norm", "silu_and_mul")


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
        self.lean = self._lean_kernels(vllm.__version__)
        self._check_lean = os.environ.get("SPECPLUG_CHECK_LEAN_DRAFT") == "1"
        self._lean_checks = 0

    def _lean_kernels(self, version: str):
        """vLLM's fused CPU kernels for the lean draft step, or None (then the modules), logged."""
        ops = getattr(torch.ops, "_C", None)
        missing = [name for name in LEAN_KERNELS if ops is None or not hasattr(ops, name)]
        L = self.layers[0]
        if not missing:
            for path in ("self_attn.qkv_proj.quant_method", "self_attn.o_proj.quant_method", "mlp.gate_up_proj",
                         "mlp.down_proj.quant_method", "mlp.act_fn", "input_layernorm.weight",
                         "input_layernorm.variance_epsilon"):
                try:
                    _need(L, path)
                except EngineModelUnsupported as e:
                    missing.append(str(e))
        if not missing and type(L.mlp.act_fn).__name__ != "SiluAndMul":
            missing.append(f"mlp.act_fn is {type(L.mlp.act_fn).__name__}, not SiluAndMul")
        if missing:
            logger.warning("specplug: swift drafts through vLLM %s's modules, not its lean path: missing %s",
                           version, ", ".join(missing))
            return None
        return ops

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

    # ------------------------------------------------------------------ the lean draft step
    @staticmethod
    def _linear(layer, x):
        """What vLLM's linear layers do on one rank, without their wrappers."""
        return layer.quant_method.apply(layer, x, None if layer.skip_bias_add else layer.bias)

    def _norm(self, module, x, pending):
        """RMSNorm of the residual stream ``x`` after adding ``pending`` (the last sub-layer's
        output) to it in place, in one kernel, as vLLM's Llama does."""
        if pending is None:
            out = torch.empty_like(x)
            self.lean.rms_norm(out, x, module.weight.data, module.variance_epsilon)
            return out
        self.lean.fused_add_rms_norm(pending, x, module.weight.data, module.variance_epsilon)
        return pending  # now the normalised stream

    @torch.no_grad()
    def forward_batch(self, ids: list[int], caches: list[LayerCache], skip_attn=frozenset(),
                      skip_mlp=frozenset()) -> torch.Tensor:
        if self.lean is None:
            return super().forward_batch(ids, caches, skip_attn, skip_mlp)
        logits = self._lean_forward_batch(ids, caches, skip_attn, skip_mlp)
        if self._check_lean:
            self._check(ids, caches, skip_attn, skip_mlp, logits)
        return logits

    def _check(self, ids, caches, skip_attn, skip_mlp, logits) -> None:
        """SPECPLUG_CHECK_LEAN_DRAFT=1 (tests): the same step through vLLM's modules must give the
        same logits and keys and values; where it does not, the lean path is dropped, loudly."""
        run = [i for i in range(self.num_layers) if i not in skip_attn]

        def newest_kv(c):  # the keys and values this step wrote, every layer that ran attention
            return torch.stack([torch.stack([c.k[i][:, c.length - 1], c.v[i][:, c.length - 1]]) for i in run])

        lean_kv = [newest_kv(c) for c in caches]
        for c in caches:
            c.crop(c.length - 1)
        ref = super().forward_batch(ids, caches, skip_attn, skip_mlp)  # rewrites the same positions
        ref_kv = [newest_kv(c) for c in caches]
        rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))  # noqa: E731
        err = max([rel(logits, ref)] + [rel(a, b) for a, b in zip(lean_kv, ref_kv)])
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2  # 16-bit: other rounding order in the fused kernels
        if err > tol:
            logger.error("specplug: swift's lean draft step differs from vLLM's modules by %.2g (tolerance %.0e "
                         "for %s); drafting through the modules from now on", err, tol, self.dtype)
            self.lean = None
            return
        self._lean_checks += 1
        if self._lean_checks in (1, 100, 1000):
            logger.info("specplug: swift's lean draft step matches vLLM's modules (relative error %.1e; %d steps "
                        "checked)", err, self._lean_checks)

    def _lean_forward_batch(self, ids: list[int], caches: list[LayerCache], skip_attn, skip_mlp) -> torch.Tensor:
        """SkipDecoder.forward_batch through vLLM's kernels with no module in between (module doc)."""
        B, H, Hkv, D = len(ids), self.num_heads, self.num_kv, self.head_dim
        ends = [c.length + 1 for c in caches]
        for c, e in zip(caches, ends):
            c.reserve(e)
        # the residual stream, added to in place: a copy, whatever the embedding returns
        x = self.embed(torch.tensor(ids, device=self.device)).clone()
        positions = torch.tensor([e - 1 for e in ends], device=self.device)
        pending = None  # the last sub-layer's output, added to x inside the next norm
        scale = D ** -0.5
        for i, layer in enumerate(self.layers):
            if i not in skip_attn:
                at = layer.self_attn
                qkv = self._linear(at.qkv_proj, self._norm(layer.input_layernorm, x, pending))
                q, k, v = qkv.split([at.q_size, at.kv_size, at.kv_size], dim=-1)
                q, k = at.rotary_emb.forward(positions, q, k)  # no module hooks
                q = q.reshape(B, Hkv, H // Hkv, D) * scale  # grouped-query heads share their key
                if q.dtype != torch.float32:
                    q = q.float()
                k, v = k.reshape(B, Hkv, D), v.reshape(B, Hkv, D)
                att = torch.empty(B, Hkv, H // Hkv, D)
                for j, (c, e) in enumerate(zip(caches, ends)):
                    ck, cv = c.k[i], c.v[i]
                    ck[:, e - 1], cv[:, e - 1] = k[j], v[j]
                    # bmm, not matmul: no broadcasting ops around it (a draft token is mostly per-op overhead)
                    torch.bmm(torch.bmm(q[j], ck[:, :e].transpose(1, 2)).softmax(-1), cv[:, :e], out=att[j])
                pending = self._linear(at.o_proj, att.view(B, H * D).to(x.dtype))
            if i not in skip_mlp:
                mlp = layer.mlp
                gate_up = self._linear(mlp.gate_up_proj, self._norm(layer.post_attention_layernorm, x, pending))
                act = gate_up.new_empty(B, gate_up.shape[-1] // 2)
                self.lean.silu_and_mul(act, gate_up)
                pending = self._linear(mlp.down_proj, act)
        for c, e in zip(caches, ends):
            c.length = e
        return self.compute_logits(self._norm(self.norm, x, pending)).float()
