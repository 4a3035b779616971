"""The SGLang algorithm class shared by every SPECPLUG_* name (imports sglang; loaded by plugin.py
only after the contract check passed).

It answers ``is_ngram() -> True`` so the algorithm joins every NGRAM branch of SGLang: the NGRAM
verify input, KV sizing without draft KV, the FutureMap relay in overlap mode, CUDA-graph capture
of fixed-width verify. It also defines the four enum methods ``CustomSpecAlgo`` lacks in 0.5.23
(the scheduler calls two of them unconditionally).
"""

from __future__ import annotations

import logging

from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from specplug.engines.sglang.settings import load_settings

logger = logging.getLogger("sglang.specplug")


class SpecplugSpecAlgo(CustomSpecAlgo):
    def is_ngram(self) -> bool:
        return True

    def has_draft_kv(self) -> bool:
        return False  # the tree lives only in the verify mask, as for NGRAM

    # --- missing from CustomSpecAlgo in sglang 0.5.23; same answers as the NGRAM enum member
    def carries_draft_hidden_states(self) -> bool:
        return False

    def need_topk(self) -> bool:
        return False

    def get_platform_worker_cls(self):
        return None

    def create_future_map(self, device, req_to_token_pool, needs_cpu_seq_lens=True, needs_confidence_relay=False):
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay)

    def handle_server_args(self, server_args) -> None:
        """What SGLang's ``_handle_ngram`` resolves for NGRAM, with specplug's own defaults.

        ``server_args`` is SGLang's recording stand-in: attribute writes become declared
        resolutions."""
        sa = server_args
        settings = load_settings(self.name, sa.speculative_num_draft_tokens)
        if sa.device not in ("cuda", "cpu", "xpu"):
            raise ValueError(f"{self.name}: SGLang's NGRAM verify path (which specplug uses) supports "
                             f"devices cuda, cpu and xpu, not {sa.device!r}")
        if sa.device == "cpu":
            sa.disable_overlap_schedule = True  # as SGLang does for NGRAM on CPU
        if sa.max_running_requests is None:
            sa.max_running_requests = 48
        sa.enable_mixed_chunk = False
        sa.speculative_num_draft_tokens = settings.width
        # topk sizes the per-decode KV reserve (max(steps*topk, width)) and gates paged backends:
        # a chain is topk 1, a tree may branch at every node
        topk = (settings.width - 1) if settings.config.tree else 1
        sa.speculative_eagle_topk = max(topk, 1)
        if sa.speculative_num_steps is None:
            sa.speculative_num_steps = max(settings.width // sa.speculative_eagle_topk, 1)
        page_size = sa.page_size or 1
        if sa.speculative_eagle_topk > 1 and page_size > 1 and sa.attention_backend not in (None, "flashinfer"):
            raise ValueError(f"{self.name}: tree verification (tree: true) with --page-size {page_size} needs "
                             f"--attention-backend flashinfer (got {sa.attention_backend}); SGLang rejects the same "
                             "for NGRAM trees. Use tree: false or --page-size 1")
        logger.info("specplug: %s -> method %s, width %d (%s), controller not applied on SGLang (fixed-width "
                    "verify)", self.name, settings.config.method, settings.width,
                    "tree" if settings.config.tree else "chain")


def validate_server_args(server_args) -> None:
    """Settings SGLang's NGRAM path does not support, rejected before anything starts."""
    sa = server_args
    if getattr(sa, "enable_dp_attention", False):
        raise ValueError("SPECPLUG_* algorithms use SGLang's NGRAM verify path, which does not support "
                         "--enable-dp-attention")
    if (getattr(sa, "pp_size", 1) or 1) > 1:
        raise ValueError("SPECPLUG_* algorithms use SGLang's NGRAM verify path, which does not support "
                         f"pipeline parallelism (--pp-size {sa.pp_size})")
    if getattr(sa, "speculative_adaptive", False):
        raise ValueError("--speculative-adaptive is not supported with SPECPLUG_* algorithms")
