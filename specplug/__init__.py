"""specplug: speculative-decoding proposers and lossless tree verification for stock vLLM and SGLang.

Importing this package never imports an engine (vLLM/SGLang adapters live in
``specplug.engines`` and import their engine lazily).
"""

from specplug._version import __version__
from specplug.config import SpecplugConfig, SpecplugConfigError, load
from specplug.tree import DraftTree

__all__ = ["__version__", "DraftTree", "SpecplugConfig", "SpecplugConfigError", "load"]
