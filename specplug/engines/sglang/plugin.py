"""The `sglang.srt.plugins` entry point. SGLang loads it in every process.

This version of specplug registers no SGLang algorithm yet. It says so once and leaves SGLang
unchanged; `--speculative-algorithm SPECPLUG_*` then fails in SGLang with its own "Unknown
speculative algorithm" error rather than running something else.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang.specplug")
_done = False


def register() -> None:
    global _done
    if _done:
        return
    _done = True
    logger.info("specplug: no SGLang speculative algorithms in this version (vLLM only); SGLang unchanged")
