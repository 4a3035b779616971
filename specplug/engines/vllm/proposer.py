"""SpecplugProposer: the object vLLM's `custom_class` hook builds in each worker.

vLLM calls ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` once per step with
per-ROW data; the BindRequestIds patch hands us the runner's input batch (row -> request id) and
the scheduler output just before, so specplug's proposers keep per-request state across steps:
- new requests (scheduler_output.scheduled_new_reqs) -> proposer.start (a reused id restarts);
- finished or aborted requests (scheduler_output.finished_req_ids) -> proposer.stop;
- tokens committed this step (sampled_token_ids[row]) -> proposer.observe.
The proposer returns a tree. With ``tree: false`` vLLM's stock hook verifies the best path as a
chain (exact by vLLM's own rejection sampler: greedy match, or p(x) acceptance for deterministic
drafts). With ``tree: true`` greedy and plain-temperature sampling requests get the whole tree,
flattened parents-first; the tree patches (tree_step.py) verify it in the same target forward.
Other requests stay chains.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from specplug.budgeting import BudgetPlanner
from specplug.config import SpecplugConfig
from specplug.engines.vllm.tree_step import tree_mode
from specplug.proposers.base import Budget, ReqState, VerifyInfo
from specplug.proposers.drafters import TargetInfo
from specplug.tree import DraftTree

logger = logging.getLogger("vllm.specplug")  # child of vLLM's configured logger
_NO_TREE = DraftTree.empty()  # the chain hook exposes no verified tree; built once, never mutated


class SpecplugProposer:
    def __init__(self, vllm_config):
        payload = (getattr(vllm_config, "additional_config", None) or {}).get("specplug")
        if payload is None:
            from specplug.engines.vllm.plugin import contract_error

            why = contract_error()
            raise RuntimeError(
                "specplug's vLLM plugin did not pass the specplug settings to this worker "
                + (f"because it refused to load:\n{why}" if why else
                   "(is the plugin allowed? if VLLM_PLUGINS is set it must include 'specplug'; "
                   "build the config with SpecplugConfig(...).to_vllm() or a --speculative-config file)")
            )
        self.config = SpecplugConfig.from_dict(payload)
        self.proposer = self.config.build_proposer()
        # a drafter must share the target's tokenizer: refuse at startup, naming both
        mc = vllm_config.model_config
        self.vocab_size = int(mc.get_vocab_size())
        self.proposer.bind_target(TargetInfo(str(mc.model), self.vocab_size))
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.planner = BudgetPlanner(self.k, enabled=self.config.controller == "goodput", trace=self._open_step_trace())
        self._input_batch = None
        self._kv_bound = False
        self._sched = None
        self._started: set[str] = set()
        self._failed_once = False
        # SPECPLUG_LOG_TIMING=N: log the mean drafting time (lifecycle + proposer) every N steps
        self._timing_every = int(os.environ.get("SPECPLUG_LOG_TIMING", "0") or 0)
        self._timing = [0, 0.0, 0]  # steps, seconds, rows
        self._gc = [0.0, 0.0, 0]  # seconds in Python's cyclic GC (worker-wide), current start, count
        self._gc_serving = False  # counting GC from the first propose() on
        if self._timing_every:
            import gc

            def on_gc(phase, info, g=self._gc):
                if phase == "start":
                    g[1] = time.perf_counter()
                else:
                    g[0] += time.perf_counter() - g[1]
                    g[2] += 1

            gc.callbacks.append(on_gc)
        logger.info("specplug: %s proposer active in this worker (%s verification, k=%d, controller=%s)",
                    self.config.method, "tree" if self.config.tree else "chain", self.k, self.config.controller)
        self.pending_trees: dict = {}  # req_id -> DraftTree sent last step (read by the tree patches)
        self._requests = None
        if self.config.tree:
            from vllm.platforms import current_platform

            if not current_platform.is_cpu():
                raise RuntimeError(
                    "specplug: tree: true needs the tree attention mask, which this version implements for "
                    "vLLM's CPU attention backend only; on this platform use tree: false (best-path chains)")
            logger.info("specplug: tree verification on for greedy and plain-temperature requests (depth "
                        "positions, tree attention mask on CPU_ATTN, greedy / sample-and-match acceptance, "
                        "KV compaction); requests with logprobs, penalties or top-k/top-p are drafted as chains")

    @staticmethod
    def _open_step_trace():
        """SPECPLUG_STEP_TRACE=DIR: one row per engine step in DIR/steps.<pid>.tsv (budgeting.py)."""
        trace_dir = os.environ.get("SPECPLUG_STEP_TRACE")
        if not trace_dir:
            return None
        os.makedirs(trace_dir, exist_ok=True)
        path = os.path.join(trace_dir, f"steps.{os.getpid()}.tsv")
        logger.info("specplug: writing a per-step trace to %s", path)
        return open(path, "w", buffering=1)  # line-buffered: complete rows even if the engine is killed

    # vLLM lifecycle -----------------------------------------------------------------
    def load_model(self, target_model) -> None:
        self.target_model = target_model  # model-free proposers ignore it
        if self.proposer.uses_target_model:
            from specplug.engines.vllm.swift_model import EngineModelUnsupported, EngineSkipDecoder

            try:
                decoder = EngineSkipDecoder(target_model, self.vocab_size, self.max_model_len)
            except EngineModelUnsupported as e:
                logger.warning("specplug: %s cannot draft with vLLM's own modules of the served model (%s); it "
                               "loads its own copy of the weights (slower, same output)", self.config.method, e)
                return
            self.proposer.bind_target_model(decoder)
            logger.info("specplug: %s drafts with vLLM's own modules of the served model (%d layers, %s; no "
                        "second copy of the weights; draft tokens %s)", self.config.method, decoder.num_layers,
                        decoder.dtype, "through vLLM's fused CPU kernels" if decoder.lean is not None else
                        "through the modules")

    def bind_step(self, input_batch, scheduler_output, requests=None, runner=None) -> None:
        if not self._kv_bound and runner is not None and self.proposer.reads_target_kv:
            from specplug.engines.vllm import target_kv

            target_kv.bind(self.proposer, runner)  # the caches exist once a step has run
            self._kv_bound = True
        self._input_batch = input_batch
        self._sched = scheduler_output
        self._requests = requests

    def _sync_lifecycle(self) -> None:
        s = self._sched
        for rid in getattr(s, "finished_req_ids", ()) or ():
            if rid in self._started:
                self.proposer.stop(rid)
                self._started.discard(rid)
            self.planner.forget(rid)
        for new in getattr(s, "scheduled_new_reqs", ()) or ():
            if new.req_id in self._started:  # reused request id: the old one is over
                self.proposer.stop(new.req_id)
                self.planner.forget(new.req_id)
            self.proposer.start(new.req_id, new.prompt_token_ids or [])
            self._started.add(new.req_id)

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None):
        if not self._timing_every:
            return self._propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        if not self._gc_serving:
            # the GC callback has run since __init__: drop what model loading and warmup collected
            self._gc[0], self._gc[2], self._gc_serving = 0.0, 0, True
        t0 = time.perf_counter()
        out = self._propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        t = self._timing
        t[0], t[1], t[2] = t[0] + 1, t[1] + time.perf_counter() - t0, t[2] + len(sampled_token_ids)
        if t[0] % self._timing_every == 0:
            logger.info("specplug: drafting %.3f ms per step (%.1f rows per step) over the last %d steps; "
                        "Python GC in this worker: %.3f ms per step (%d collections); controller: %s",
                        t[1] / t[0] * 1e3, t[2] / t[0], t[0], self._gc[0] / t[0] * 1e3, self._gc[2],
                        self.planner.summary() if self.planner.enabled else "off")
            t[0], t[1], t[2] = 0, 0.0, 0
            self._gc[0], self._gc[2] = 0.0, 0
        return out

    def _budget(self, req_id: str, size: int) -> Budget:
        """A tree when this step's tree patches will verify it; for a plain-temperature sampling
        request its temperature too (TreeAcceptance verifies a stochastic tree by recursive
        rejection, so a proposer may sample its drafts)."""
        mode = tree_mode(req_id, self._input_batch, self._requests) if self.config.tree and size > 0 else None
        if mode != "sample":
            return Budget(max(size, 1), tree=mode is not None)
        return Budget(size, tree=True, temperature=float(self._requests[req_id].sampling_params.temperature))

    def _propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu):
        out: list[list[int]] = [[] for _ in sampled_token_ids]
        if self._input_batch is None:
            raise RuntimeError(
                "specplug: request ids were not bound before propose(); the BindRequestIds patch "
                "of GPUModelRunner.propose_draft_token_ids is not active in this worker"
            )
        sched = self._sched
        self.planner.step_started(int(getattr(sched, "total_num_scheduled_tokens", 0) or 0),
                                  bool(getattr(sched, "scheduled_new_reqs", None)),
                                  len(getattr(sched, "num_scheduled_tokens", None) or ()))
        self._sync_lifecycle()
        req_ids = self._input_batch.req_ids
        rows_now = len(sampled_token_ids)
        num_prompt = self._input_batch.num_prompt_tokens[:rows_now].tolist()
        num_tokens = num_tokens_no_spec[:rows_now].tolist()
        k_sched = int(getattr(sched, "num_spec_tokens_to_schedule", 0) or 0)
        k = min(self.k, k_sched) if k_sched > 0 else self.k
        proposer, planner, started = self.proposer, self.planner, self._started
        rows, ids, caps = [], [], []
        for row, sampled in enumerate(sampled_token_ids):
            if not sampled:  # a prefill chunk: nothing was sampled, nothing to draft
                continue
            rid = req_ids[row]
            n = num_tokens[row]
            if rid not in started:  # e.g. the plugin was bound after the request arrived
                proposer.start(rid, token_ids_cpu[row, : num_prompt[row]].tolist())
                started.add(rid)
            else:
                # root_token: the token before this step's commits, so learners can pair
                # each committed token with its predecessor (no target top-k on this path)
                prev = int(token_ids_cpu[row, n - len(sampled) - 1]) if n > len(sampled) else None
                proposer.observe(rid, sampled, VerifyInfo(_NO_TREE, [], None, root_token=prev))
            planner.committed(rid, sampled)
            cap = min(k, self.max_model_len - n - 1)
            if cap > 0:
                rows.append(row)
                ids.append(rid)
                caps.append(cap)
        self.pending_trees = {}
        if not ids:
            planner.step_finished(0)
            return out
        plan = planner.budgets(ids)
        # budget 0: draft nothing, except now and then one unsent shadow token (specplug/budgeting.py)
        sizes = [min(cap, plan[rid]) for rid, cap in zip(ids, caps)]
        keep = [i for i, (rid, size) in enumerate(zip(ids, sizes)) if size > 0 or planner.shadow(rid)]
        if not keep:
            planner.step_finished(0)
            return out
        rows, sizes = [rows[i] for i in keep], [sizes[i] for i in keep]
        # what a proposer reads at draft time, built only for the requests that draft
        batch = [ReqState(req_ids[row], np.asarray(token_ids_cpu[row, : num_tokens[row]]), num_prompt[row])
                 for row in rows]
        budgets = [self._budget(r.req_id, size) for r, size in zip(batch, sizes)]
        self.planner.propose_started()
        try:
            trees = self.proposer.propose(batch, budgets)
        except Exception:  # drafting is an optimisation: never take the engine down with it
            if not self._failed_once:
                logger.exception("specplug: %s proposer raised; drafting nothing this step "
                                 "(further failures are not logged)", self.config.method)
                self._failed_once = True
            self.planner.step_finished(0)
            return out
        for row, req, tree, size, b in zip(rows, batch, trees, sizes, budgets):
            if b.tree and tree.num_nodes > 0:
                tree = tree.subtree(range(min(tree.num_nodes, b.max_nodes)))  # parents-first: a prefix is a tree
                # Lead path first (DraftTree.lead_path): its rows are then computed by the attention
                # backend as in a chain step (only the other branches get the tree mask), and vLLM's
                # own truncation of the drafts near max_model_len keeps it.
                tree = tree.lead_path_first()
                out[row] = [int(t) for t in tree.tokens]
                self.pending_trees[req.req_id] = tree
                self.planner.drafted(req.req_id, out[row], sent=True)
                continue
            tokens = [int(t) for t in tree.chain_tokens()[: b.max_nodes]]
            if size > 0:
                out[row] = tokens
            self.planner.drafted(req.req_id, tokens, sent=size > 0)
        self.planner.step_finished(len(batch))
        return out
