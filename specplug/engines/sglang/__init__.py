"""specplug's SGLang adapter (planned: SPECPLUG_* speculative algorithms on SGLang's NGRAM tree
path). Only the entry point exists in this version; see specplug/engines/sglang/plugin.py."""

SUPPORTED_SGLANG_VERSIONS = ("0.5.23",)
