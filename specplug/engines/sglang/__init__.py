"""specplug's SGLang adapter: SPECPLUG_* speculative algorithms on SGLang's NGRAM tree-verify path.

Engine-free modules (no sglang import): layout.py, drafting.py, settings.py, contract.py.
Modules that import sglang, loaded only after the contract check: algorithm.py, worker.py.
"""

SUPPORTED_SGLANG_VERSIONS = ("0.5.23",)

