"""SpecplugNgramWorker: SGLang's NGRAM worker with specplug's proposers as the draft source
(imports sglang's GPU-side modules; built by plugin.py's factory inside the scheduler process).

Only the draft source changes. NGRAMWorker's own code keeps doing everything else each round:
tree links from the mask, the TARGET_VERIFY forward, `eagle_sample` (greedy tree walk, or
target-only tree sampling, exact for deterministic drafts), moving the accepted path's KV to the
front, `on_publish`, the radix-cache commit by the scheduler and the overlap relay. The methods
replaced here are the ones that talk to NGRAM's C++ corpus:
- ``__init__``: no corpus is built; ``self.ngram_corpus`` is a small adapter over `DraftSource`
  (NGRAMWorker still calls its ``erase_match_state`` and ``reset``);
- ``_prepare_draft_tokens``: each request's whole history (NGRAM only passes the last
  ``max_trie_depth`` tokens) with the same overlap splice as NGRAM; drafting.py keeps the
  histories and reads only new tokens; layout.py lays the trees out;
- ``_update_ngram_corpus``: nothing to do (NGRAM's would build each request's tail for its corpus
  every round): the next round's histories carry the commits.
"""

from __future__ import annotations

import logging

from sglang.srt.runtime_context import get_device, get_schedule, get_spec
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_worker import NGRAMWorker

from specplug.engines.sglang import contract
from specplug.engines.sglang.drafting import DraftSource
from specplug.engines.sglang.settings import load_settings
from specplug.proposers.drafters import TargetInfo

logger = logging.getLogger("sglang.specplug")


class _CorpusAdapter:
    """The part of NgramCorpus's interface NGRAMWorker calls outside the methods replaced here."""

    def __init__(self, source: DraftSource):
        self.source = source

    def erase_match_state(self, req_ids) -> None:
        self.source.erase(req_ids)

    def reset(self) -> None:
        self.source.reset()


class SpecplugNgramWorker(NGRAMWorker):
    def __init__(self, server_args, gpu_id, nccl_port, target_worker):
        BaseSpecWorker.__init__(self)  # not NGRAMWorker.__init__: it would JIT-build the C++ corpus
        spec = get_spec()
        self.server_args = server_args
        self.enable_overlap = not get_schedule().disable_overlap_schedule
        self._target_worker = target_worker
        self.model_runner = target_worker.model_runner
        self.page_size = get_schedule().page_size
        self.draft_token_num = spec.speculative_num_draft_tokens
        self.speculative_num_draft_tokens = spec.speculative_num_draft_tokens
        self.max_trie_depth = spec.speculative_ngram_max_trie_depth  # unused: histories are complete
        self.topk = spec.speculative_eagle_topk
        self.speculative_num_steps = spec.speculative_num_steps
        self.device = get_device().device
        self.adaptive_controller = None
        self._prev_decode_rids = set()
        self.grammar_tree_host = None
        settings = load_settings(spec.speculative_algorithm, self.draft_token_num)
        self.draft_source = DraftSource(settings.config, settings.width)
        # a drafter must share the target's tokenizer: refuse at startup, naming both
        # (ModelConfig's module cannot be read by the source-level contract check on a CPU
        # machine, so its two attributes are checked here, where they are used)
        mc = getattr(self.model_runner, "model_config", None)
        missing = [a for a in ("model_path", "vocab_size") if not hasattr(mc, a)]
        if missing:
            raise RuntimeError(f"specplug: sglang {contract.installed_version()} ModelRunner.model_config has no "
                               f"{missing}; this SGLang version is not supported")
        self.draft_source.proposer.bind_target(TargetInfo(str(mc.model_path), int(mc.vocab_size)))
        self.ngram_corpus = _CorpusAdapter(self.draft_source)
        logger.info("specplug: %s proposer drafting for SGLang's NGRAM verify path (%s, width %d, overlap %s)",
                    settings.config.method, "tree" if settings.config.tree else "chain", settings.width,
                    "on" if self.enable_overlap else "off")

    def _update_ngram_corpus(self, batch) -> None:
        pass  # commits reach the proposer through the next round's histories (drafting.py)

    def _prepare_draft_tokens(self, batch):
        # as NGRAMWorker: in overlap mode the last round's accepted tokens are not yet in
        # req.output_ids, so they are spliced on from the relayed verify result
        spliced = None
        if self.enable_overlap and not batch.grammar_needs_sync():
            prev_ids, prev_lens = batch.spec_info.accept_tokens, batch.spec_info.accept_lens
            if not prev_ids.is_cpu:
                prev_ids, prev_lens = prev_ids.cpu(), prev_lens.cpu()
            prev_ids, prev_lens, stride = prev_ids.tolist(), prev_lens.tolist(), self.draft_token_num
            spliced = [prev_ids[i * stride : i * stride + n] for i, n in enumerate(prev_lens)]
        # the draft source reads only the tokens it has not seen yet (no per-round context copies)
        return self.draft_source.draft([req.rid for req in batch.reqs],
                                       [req.origin_input_ids_unpadded for req in batch.reqs],
                                       [req.output_ids for req in batch.reqs], spliced)
