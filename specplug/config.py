"""One typed configuration for every engine; YAML/JSON files; errors that name the bad key.

File format (configs/*.yaml):

    method: suffix                 # one of specplug.proposers.available_methods()
    num_speculative_tokens: 16     # per-request draft cap: chain length, or tree node budget
    tree: false                    # verify whole trees (SGLang always can; vLLM needs the tree patches)
    controller: goodput            # per-step draft budgets from measured costs (off: always the cap)
    suffix:                        # options of the chosen method, section named after it
      max_depth: 24

The same object converts to what each engine takes (``to_vllm()``, ``to_sglang()``); engine-specific code lives
in ``specplug.engines`` and is never imported from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specplug.proposers import ProposerOptions, get_proposer_class

# The class vLLM's `custom_class` hook instantiates in each worker.
VLLM_PROPOSER_CLASS = "specplug.engines.vllm.proposer.SpecplugProposer"
# Key under which the specplug payload travels inside vLLM's speculative_config dict until
# the plugin moves it into VllmConfig.additional_config (see engines/vllm/patches.py).
VLLM_PAYLOAD_KEY = "specplug"
# Environment variable that carries a config to SGLang's processes (engines/sglang/settings.py).
SGLANG_CONFIG_ENV = "SPECPLUG_CONFIG"
# SGLang algorithm names are this prefix + the method, upper-cased (SPECPLUG_SUFFIX).
SGLANG_ALGORITHM_PREFIX = "SPECPLUG_"


class SpecplugConfigError(ValueError):
    """A config problem; the message starts with the dotted key at fault."""


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "") or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid specplug config: " + "; ".join(lines)


class SpecplugConfig(BaseModel):
    """Typed specplug configuration. Build with ``SpecplugConfig(method=..., ...)``,
    ``SpecplugConfig.from_yaml(path)`` or ``SpecplugConfig.from_dict(d)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    num_speculative_tokens: int = Field(16, ge=1, le=128)
    tree: bool = False
    # goodput: per step, each request's draft budget (0 = off) is chosen from measured step
    # times and its recent acceptance (specplug/control.py); off: always draft up to the cap.
    controller: Literal["goodput", "off"] = "goodput"
    options: ProposerOptions | None = None

    @field_validator("controller", mode="before")
    @classmethod
    def _yaml_booleans(cls, v):
        # YAML 1.1 reads a bare `off`/`on` as a boolean
        return {False: "off", True: "goodput"}.get(v, v) if isinstance(v, bool) else v

    def __init__(self, **data: Any):
        # Accept the file layout (options in a section named after the method) as keyword args.
        method = data.get("method")
        if not isinstance(method, str):
            raise SpecplugConfigError("invalid specplug config: method: a method name is required")
        try:
            cls = get_proposer_class(method)
        except ValueError as e:
            raise SpecplugConfigError(f"invalid specplug config: {e}") from None
        section = data.pop(method, None)
        opts = data.pop("options", None)
        if section is not None and opts is not None:
            raise SpecplugConfigError(f"invalid specplug config: {method}: given both as a section and as options")
        raw = section if section is not None else opts
        if isinstance(raw, ProposerOptions):
            options = raw
        else:
            if raw is not None and not isinstance(raw, dict):
                raise SpecplugConfigError(f"invalid specplug config: {method}: must be a mapping, got {type(raw).__name__}")
            try:
                options = cls.Options(**(raw or {}))
            except ValidationError as e:
                raise SpecplugConfigError(_format_validation_error(e, method)) from None
        try:
            super().__init__(options=options, **data)
        except ValidationError as e:
            raise SpecplugConfigError(_format_validation_error(e)) from None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, d: dict) -> "SpecplugConfig":
        if not isinstance(d, dict):
            raise SpecplugConfigError(f"invalid specplug config: expected a mapping, got {type(d).__name__}")
        return cls(**dict(d))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SpecplugConfig":
        """Read a .yaml/.yml/.json file (JSON is YAML)."""
        p = Path(path)
        if not p.is_file():
            raise SpecplugConfigError(f"invalid specplug config: file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise SpecplugConfigError(f"invalid specplug config: {p} is not valid YAML: {e}") from None
        try:
            return cls.from_dict(data)
        except SpecplugConfigError as e:
            raise SpecplugConfigError(f"{e} [in {p}]") from None

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict:
        """The file layout (round-trips through ``from_dict``)."""
        out: dict[str, Any] = {
            "method": self.method,
            "num_speculative_tokens": self.num_speculative_tokens,
            "tree": self.tree,
            "controller": self.controller,
        }
        out[self.method] = self.options.model_dump(mode="json") if self.options else {}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def build_proposer(self):
        """Instantiate this config's proposer."""
        cls = get_proposer_class(self.method)
        return cls(self.options, self.num_speculative_tokens)

    def to_vllm(self) -> dict:
        """The value for vLLM's ``speculative_config`` (``LLM(..., speculative_config=cfg.to_vllm())``).

        A stock ``custom_class`` config plus specplug's payload, which specplug's vLLM plugin
        moves into ``additional_config`` before vLLM validates the dict (the plugin is loaded by
        vLLM itself through the ``vllm.general_plugins`` entry point).
        """
        return {
            "method": "custom_class",
            "model": VLLM_PROPOSER_CLASS,
            "num_speculative_tokens": self.num_speculative_tokens,
            VLLM_PAYLOAD_KEY: self.to_dict(),
        }

    def to_sglang(self) -> dict:
        """Keyword arguments for SGLang (``sgl.Engine(model_path=..., **cfg.to_sglang())``).

        SGLang's ServerArgs takes no unknown keys, so the method settings travel in the
        ``SPECPLUG_CONFIG`` environment variable, which this call sets (as inline JSON) and SGLang's
        spawned scheduler processes inherit; specplug's SGLang plugin reads it there. The verify
        width counts the last committed token: ``num_speculative_tokens + 1``.
        """
        import os

        os.environ[SGLANG_CONFIG_ENV] = self.to_json()
        return {
            "speculative_algorithm": SGLANG_ALGORITHM_PREFIX + self.method.upper(),
            "speculative_num_draft_tokens": self.num_speculative_tokens + 1,
        }


def load(path: str | Path) -> SpecplugConfig:
    """``specplug.load("specplug.yaml")``."""
    return SpecplugConfig.from_yaml(path)
