"""A read-only view of the target's keys and values in vLLM's paged KV cache (``TargetKV``).

swift drafts with the target's own weights, so the committed tokens' keys and values it needs
are exactly what the target computed for them in its verify forwards. Reading them from the
paged cache replaces recomputing them with a second full forward per step (docs/vllm.md).

Why reading is safe at ``propose`` time: vLLM calls the drafter after the step's forward and
sampling (and after the tree step moved accepted nodes' KV into place), so positions
0..n-2 of a request (everything before the newest sampled token) hold the target's keys and
values of its committed tokens, and no forward runs while the drafter reads. Blocks are found
through the request's block-table row, as the attention kernel finds them, and the kernel's
in-block layout is learned by probing its own cache-write op (tree_step.CacheLayout). Nothing
is ever written to the engine's cache: drafts keep their keys and values in the proposer.

Supported: vLLM's CPU attention backend (CPU_ATTN), one KV cache group, one attention layer per
decoder layer, unquantized KV. Anything else refuses at the first read, naming what it found.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("vllm.specplug")


class TargetKVUnavailable(RuntimeError):
    pass


class PagedTargetKV:
    def __init__(self, runner):
        from vllm.model_executor.models.utils import extract_layer_index
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

        from specplug.engines.vllm import tree_step
        from specplug.engines.vllm.patches import TreeAttentionCPU

        self.runner = runner
        groups = getattr(getattr(runner, "kv_cache_config", None), "kv_cache_groups", None)
        if groups is None or len(groups) != 1:
            raise TargetKVUnavailable(f"{0 if groups is None else len(groups)} KV cache groups (needs exactly 1)")
        forward_context = runner.compilation_config.static_forward_context
        layers = {}
        for name, layer in forward_context.items():
            impl = getattr(layer, "impl", None)
            if impl is None or not hasattr(layer, "kv_cache"):
                continue
            if not isinstance(impl, CPUAttentionBackendImpl):
                raise TargetKVUnavailable(f"layer {name} uses {type(impl).__name__}, not the CPU attention backend")
            if impl.is_fp8_kv_cache or impl.attn_type != "decoder" or impl.sliding_window not in (None, -1):
                raise TargetKVUnavailable(f"layer {name}: quantized, non-decoder or sliding-window attention")
            index = extract_layer_index(name)
            if index in layers:
                raise TargetKVUnavailable(f"two attention layers with index {index} ({name})")
            layers[index] = layer
        if sorted(layers) != list(range(len(layers))) or not layers:
            raise TargetKVUnavailable(f"attention layer indices {sorted(layers)} are not 0..L-1")
        self.layers = [layers[i] for i in range(len(layers))]
        self.num_layers = len(self.layers)
        self._split = TreeAttentionCPU.split_kv
        first = self.layers[0]
        nb, hkv, bs, d2 = first.kv_cache.shape
        self.dtype = first.kv_cache.dtype
        write = lambda k, v, cache, slots: first.impl.do_kv_cache_update(first, k, v, cache, slots)  # noqa: E731
        self.layout = tree_step.CacheLayout.probe(write, hkv, bs, d2 // 2, first.kv_cache.dtype, self._split)
        self.num_kv_heads = hkv
        for i, layer in enumerate(self.layers):
            if tuple(layer.kv_cache.shape[1:]) != (hkv, bs, d2) or getattr(layer, "isa", None) != getattr(first, "isa", None):
                raise TargetKVUnavailable(f"layer {i}'s KV cache is laid out differently from layer 0's")
            if not layer.kv_cache.is_contiguous():
                raise TargetKVUnavailable(f"layer {i}'s KV cache is not one contiguous tensor")

    def read(self, req_id: str, start: int, end: int):
        batch = self.runner.input_batch
        row = batch.req_id_to_index.get(req_id)
        if row is None:
            return None
        table = batch.block_table[0]
        block_row = table.get_device_tensor(row + 1)[row]
        if (end + self.layout.block_size - 1) // self.layout.block_size > int(table.num_blocks_per_row[row]):
            return None  # positions the request has no block for
        index = self.layout.kv_index(block_row, start, end, self.num_kv_heads)  # the same for every layer
        out = []
        for layer in self.layers:
            kv = layer.kv_cache.view(-1)[index].transpose(1, 2).float()  # [2, H, n, D]
            out.append((kv[0], kv[1]))
        return out


def bind(proposer, runner) -> bool:
    """Hand ``proposer`` a reader of ``runner``'s paged cache; False (logged, drafting then
    recomputes the keys and values itself) where this engine's cache cannot be read."""
    try:
        reader = PagedTargetKV(runner)
    except (TargetKVUnavailable, ImportError, AttributeError) as e:
        logger.warning("specplug: %s cannot read the target's KV cache (%s); it recomputes the committed "
                       "tokens' keys and values itself (slower, same output)", proposer.name, e)
        return False
    proposer.bind_target_kv(reader)
    logger.info("specplug: %s reads the target's keys and values from vLLM's paged KV cache (%d layers, %s, "
                "block size %d)", proposer.name, reader.num_layers, reader.dtype, reader.layout.block_size)
    return True
