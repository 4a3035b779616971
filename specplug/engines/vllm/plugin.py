"""The `vllm.general_plugins` entry point. vLLM calls `register()` once in every process
(API server, engine core, workers) before it parses arguments or builds runners.

It checks the contract (every vLLM symbol specplug touches), then applies the patches in
patches.py. The patches are inert until a specplug config is used. On a contract mismatch it
registers nothing and logs why; using a specplug config then fails loudly in SpecplugProposer.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.specplug")  # child of vLLM's configured logger
_state = {"done": False, "error": None}


def register() -> None:
    if _state["done"]:
        return
    _state["done"] = True
    from specplug.engines.vllm import contract, patches

    try:
        contract.check()
    except contract.VllmContractError as e:
        _state["error"] = str(e)
        logger.error("%s\nspecplug registered nothing; vLLM runs unchanged.", e)
        return
    patches.apply_all()
    logger.debug("specplug: vLLM %s patches applied: %s", contract.installed_version(),
                 ", ".join(p.target for p in patches.ALL_PATCHES))


def contract_error() -> str | None:
    """Why registration was refused in this process, if it was."""
    return _state["error"]
