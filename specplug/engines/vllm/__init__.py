"""specplug's vLLM adapter. Nothing here is imported by the core; vLLM itself is imported lazily
inside functions, so this package imports even without vLLM installed."""

# vLLM releases whose internals every patch was checked against (see contract.py).
SUPPORTED_VLLM_VERSIONS = ("0.32.0",)
