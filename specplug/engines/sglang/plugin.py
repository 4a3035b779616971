"""The `sglang.srt.plugins` entry point. SGLang's ``load_plugins()`` calls ``register`` in every
process (the launcher, and each spawned scheduler), before server args are resolved there.

It registers one SGLang speculative algorithm per specplug method (SPECPLUG_SUFFIX,
SPECPLUG_RECYCLING, SPECPLUG_RASD) after checking every SGLang symbol the adapter touches
(contract.py). On a mismatch it registers nothing and logs why, so ``--speculative-algorithm
SPECPLUG_*`` then fails in SGLang with "Unknown speculative algorithm" instead of running
something else; ``registration_error()`` returns the reason.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang.specplug")
_state: dict = {"done": False, "error": None, "names": ()}


def _worker_factory(server_args):
    from specplug.engines.sglang.worker import SpecplugNgramWorker

    return SpecplugNgramWorker


def register() -> None:
    """Idempotent per process; never raises (a plugin must not take SGLang down)."""
    if _state["done"]:
        return
    _state["done"] = True
    try:
        from specplug.engines.sglang.contract import check_contract

        check_contract()
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
        from sglang.srt.speculative.spec_registry import get_spec

        from specplug.engines.sglang.algorithm import SpecplugSpecAlgo, validate_server_args
        from specplug.engines.sglang.settings import algorithm_names

        names = []
        for name in sorted(algorithm_names()):
            if get_spec(name) is not None:  # registered by an earlier load in this process
                names.append(name)
                continue
            SpeculativeAlgorithm.register(name, supports_overlap=True, validate_server_args=validate_server_args,
                                          spec_class=SpecplugSpecAlgo)(_worker_factory)
            names.append(name)
        _state["names"] = tuple(names)
        logger.info("specplug: registered SGLang speculative algorithms %s", ", ".join(names))
    except Exception as e:  # noqa: BLE001 - reported, never raised into SGLang's plugin loader
        _state["error"] = f"{type(e).__name__}: {e}"
        logger.error("specplug: SGLang algorithms not registered: %s", _state["error"])


def registration_error() -> str | None:
    return _state["error"]


def registered_names() -> tuple[str, ...]:
    return _state["names"]
