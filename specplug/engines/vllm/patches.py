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
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os

logger = logging.getLogger("vllm.specplug")  # child of vLLM's configured logger

CHECKED_VERSIONS = ("0.32.0",)
_MARK = "_specplug_patched"
SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _already(obj) -> bool:
    return getattr(obj, _MARK, False)


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


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

        orig = EngineArgs.add_cli_args
        if _already(orig):
            return

        @functools.wraps(orig)
        def add_cli_args(parser, *args, **kwargs):
            parser = orig(parser, *args, **kwargs)
            action = parser._option_string_actions.get("--speculative-config")
            if action is not None and not _already(action.type):
                action.type = _mark(functools.partial(cls.convert, inner=action.type))
                action.type.__name__ = "speculative config (JSON or specplug YAML/JSON file)"
            return parser

        EngineArgs.add_cli_args = staticmethod(_mark(add_cli_args))


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
        logger.info("specplug: %s via vLLM custom_class, num_speculative_tokens=%d, chain verification "
                    "(vLLM's rejection sampler); options %s", payload["method"], spec["num_speculative_tokens"],
                    json.dumps(payload.get(payload["method"], {}), sort_keys=True))

    @classmethod
    def apply(cls) -> None:
        from vllm.engine.arg_utils import EngineArgs

        orig = EngineArgs.create_speculative_config
        if _already(orig):
            return

        @functools.wraps(orig)
        def create_speculative_config(self, target_model_config, target_parallel_config, *a, **kw):
            cls.translate(self)
            return orig(self, target_model_config, target_parallel_config, *a, **kw)

        EngineArgs.create_speculative_config = _mark(create_speculative_config)


# ---------------------------------------------------------------------- 3
class BindRequestIds:
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids"

    @classmethod
    def apply(cls) -> None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        orig = GPUModelRunner.propose_draft_token_ids
        if _already(orig):
            return

        @functools.wraps(orig)
        def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, *a, **kw):
            bind = getattr(getattr(self, "drafter", None), "bind_step", None)
            if bind is not None:
                bind(self.input_batch, scheduler_output)
            return orig(self, scheduler_output, sampled_token_ids, *a, **kw)

        GPUModelRunner.propose_draft_token_ids = _mark(propose_draft_token_ids)


ALL_PATCHES = (CliSpeculativeConfigFile, SpecplugPayloadToAdditionalConfig, BindRequestIds)


def apply_all() -> None:
    for patch in ALL_PATCHES:
        patch.apply()
