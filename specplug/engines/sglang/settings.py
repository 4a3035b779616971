"""Which specplug config a SPECPLUG_* algorithm runs with (engine-free: no sglang import).

SGLang's ServerArgs is a closed struct (an unknown keyword is a TypeError), so method settings
travel in the environment, which SGLang's spawned scheduler processes inherit:
- ``SPECPLUG_CONFIG``: a specplug YAML/JSON file path, or the config itself as inline JSON
  (``SpecplugConfig.to_sglang()`` sets it);
- without it, the method's defaults.
The algorithm name fixes the method (SPECPLUG_SUFFIX -> suffix); a config naming another method is
an error naming both. The verify width (``--speculative-num-draft-tokens``) counts node 0, the last
committed token, so it is ``num_speculative_tokens + 1``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from specplug.config import SGLANG_ALGORITHM_PREFIX, SGLANG_CONFIG_ENV, SpecplugConfig, SpecplugConfigError
from specplug.proposers import available_methods

CONFIG_ENV = SGLANG_CONFIG_ENV


def algorithm_name(method: str) -> str:
    return SGLANG_ALGORITHM_PREFIX + method.upper()


def algorithm_names() -> dict[str, str]:
    """SGLang algorithm name -> specplug method, for every implemented method."""
    return {algorithm_name(m): m for m in available_methods()}


@dataclasses.dataclass(frozen=True)
class Settings:
    config: SpecplugConfig
    width: int  # nodes verified per request per round, node 0 included


def _read_env_config() -> SpecplugConfig | None:
    raw = os.environ.get(CONFIG_ENV, "").strip()
    if not raw:
        return None
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SpecplugConfigError(f"invalid specplug config: {CONFIG_ENV} is not valid JSON: {e}") from None
        return SpecplugConfig.from_dict(data)
    return SpecplugConfig.from_yaml(raw)


def load_settings(algorithm: str, num_draft_tokens: int | None) -> Settings:
    """Settings for ``algorithm`` given SGLang's ``--speculative-num-draft-tokens`` (None if unset)."""
    method = algorithm_names().get(algorithm.upper())
    if method is None:
        raise SpecplugConfigError(f"invalid specplug config: {algorithm} is not a specplug algorithm "
                                  f"(available: {', '.join(sorted(algorithm_names()))})")
    if num_draft_tokens is not None and int(num_draft_tokens) < 2:
        raise SpecplugConfigError(f"invalid specplug config: --speculative-num-draft-tokens must be >= 2 "
                                  f"(node 0 is the last committed token), got {num_draft_tokens}")
    config = _read_env_config()
    if config is None:
        kwargs = {"method": method}
        if num_draft_tokens is not None:
            kwargs["num_speculative_tokens"] = num_draft_tokens - 1
        config = SpecplugConfig(**kwargs)
    elif config.method != method:
        raise SpecplugConfigError(f"invalid specplug config: method: {CONFIG_ENV} names method "
                                  f"'{config.method}' but the SGLang algorithm is {algorithm} "
                                  f"(method '{method}'); use --speculative-algorithm "
                                  f"{algorithm_name(config.method)} or change the config")
    if num_draft_tokens is None:
        width = config.num_speculative_tokens + 1
    else:
        width = int(num_draft_tokens)
        if "num_speculative_tokens" in config.model_fields_set and config.num_speculative_tokens + 1 != width:
            raise SpecplugConfigError(
                f"invalid specplug config: num_speculative_tokens: {config.num_speculative_tokens} in "
                f"{CONFIG_ENV} disagrees with --speculative-num-draft-tokens {width} (which counts the "
                f"last committed token too: expected {config.num_speculative_tokens + 1}); set one of them")
    return Settings(config, width)
