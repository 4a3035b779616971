"""Load-time contract check: every vLLM symbol specplug touches must exist with the parameters
the patches expect. On any mismatch nothing is patched and the error names the symbol, what was
expected, what was found and the installed vLLM version."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os

from specplug.engines.vllm import SUPPORTED_VLLM_VERSIONS

ALLOW_UNTESTED_ENV = "SPECPLUG_ALLOW_UNTESTED_VLLM"


class VllmContractError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    """``module:Qualified.name`` must exist; for callables, ``params`` must be a prefix of its
    parameter names; for dataclasses, ``fields`` must be among its fields; ``source``: strings its
    source must contain (instance attributes that only exist once __init__ ran)."""

    target: str
    params: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    source: tuple[str, ...] = ()


REQUIREMENTS = (
    Requirement("vllm.engine.arg_utils:EngineArgs.add_cli_args", params=("parser",)),
    Requirement("vllm.engine.arg_utils:EngineArgs.create_speculative_config",
                params=("self", "target_model_config", "target_parallel_config")),
    Requirement("vllm.engine.arg_utils:EngineArgs", fields=("speculative_config", "additional_config")),
    Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids",
                params=("self", "scheduler_output", "sampled_token_ids")),
    Requirement("vllm.v1.spec_decode.custom_class_proposer:create_custom_proposer", params=("vllm_config",)),
    # total_num_scheduled_tokens: the goodput controller's step-size measurement
    Requirement("vllm.v1.core.sched.output:SchedulerOutput",
                fields=("scheduled_new_reqs", "finished_req_ids", "total_num_scheduled_tokens",
                        "num_scheduled_tokens", "num_spec_tokens_to_schedule")),
    Requirement("vllm.v1.core.sched.output:NewRequestData", fields=("req_id", "prompt_token_ids")),
    # tree verification (patches 4-6, tree_step.py)
    Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs",
                params=("self", "scheduler_output", "num_scheduled_tokens")),
    Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample",
                params=("self", "logits", "spec_decode_metadata")),
    Requirement("vllm.v1.core.sched.output:SchedulerOutput", fields=("scheduled_spec_decode_tokens",)),
    Requirement("vllm.v1.spec_decode.metadata:SpecDecodeMetadata", fields=("num_draft_tokens",)),
    # patch 7: drafting for every step, also when a request is near max_model_len
    Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner._input_fits_in_drafter",
                params=("self", "common_attn_metadata")),
    # patch 8: a batch without drafts is prepared as a plain decode step
    Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs",
                source=("use_spec_decode = self.speculative_config is not None",)),
    Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner.initialize_kv_cache", source=("self.kv_cache_config =",)),
    Requirement("vllm.v1.kv_cache_interface:KVCacheGroupSpec", fields=("kv_cache_spec",)),
    Requirement("vllm.v1.kv_cache_interface:AttentionSpec"),
    # swift reads the target's keys and values from the paged cache (target_kv.py)
    Requirement("vllm.model_executor.models.utils:extract_layer_index", params=("layer_name",)),
    Requirement("vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.do_kv_cache_update",
                params=("self", "layer", "key", "value", "kv_cache", "slot_mapping")),
    Requirement("vllm.v1.worker.block_table:BlockTable.get_device_tensor", params=("self", "num_reqs")),
    Requirement("vllm.v1.worker.block_table:BlockTable.__init__", source=("self.num_blocks_per_row",)),
    Requirement("vllm.v1.worker.gpu_input_batch:InputBatch.__init__", source=("self.req_id_to_index",)),
    # drafters are checked against the target's folder and vocabulary (SpecplugProposer.__init__)
    Requirement("vllm.config:ModelConfig", fields=("model",)),
    Requirement("vllm.config:ModelConfig.get_vocab_size", params=("self",)),
    Requirement("vllm.v1.worker.gpu_input_batch:InputBatch.__init__",
                source=("self.greedy_reqs", "self.num_computed_tokens_cpu", "self.num_logprobs")),
)


def resolve(target: str):
    module, _, qual = target.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def installed_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")


def check() -> None:
    """Raise VllmContractError describing every broken requirement."""
    version = installed_version()
    problems = []
    if version not in SUPPORTED_VLLM_VERSIONS and os.environ.get(ALLOW_UNTESTED_ENV) != "1":
        problems.append(
            f"vLLM {version} is not a version specplug was checked against ({', '.join(SUPPORTED_VLLM_VERSIONS)}); "
            f"set {ALLOW_UNTESTED_ENV}=1 to try anyway (the symbol checks below still apply)"
        )
    for req in REQUIREMENTS:
        try:
            obj = resolve(req.target)
        except (ImportError, AttributeError) as e:
            problems.append(f"{req.target}: missing ({type(e).__name__}: {e})")
            continue
        if req.params:
            try:
                names = tuple(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                names = ()
            if names[: len(req.params)] != req.params:
                problems.append(f"{req.target}: expected parameters {req.params}, found {names}")
        if req.fields:
            have = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set(dir(obj))
            missing = [f for f in req.fields if f not in have]
            if missing:
                problems.append(f"{req.target}: missing fields {missing}")
        if req.source:
            try:
                text = inspect.getsource(obj)
            except (OSError, TypeError):
                text = ""
            missing = [x for x in req.source if x not in text]
            if missing:
                problems.append(f"{req.target}: source no longer sets {missing}")
    if problems:
        raise VllmContractError(
            f"specplug cannot plug into vLLM {version}:\n  - " + "\n  - ".join(problems)
        )
