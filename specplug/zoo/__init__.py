"""Reference models trained here, offline, on the Python standard library's own sources.

No model hub is reachable, and random weights make acceptance meaningless, so the models that
tests, demo and benchmarks speculate on are trained on this machine (`specplug zoo build`):

- ``tokenizer``: byte-level BPE (``tokenizers``), shared by every model below;
- ``target``: a Llama decoder (vLLM serves it), deep enough for layer skipping to mean something;
- ``draft``: a 2-layer Llama decoder with the same tokenizer (vLLM's ``draft_model`` method).

The shipped copies live in ``specplug/zoo/weights/<name>/`` (fp16 safetensors, sha256 manifest);
``zoo_model(name)`` checks them and returns a folder vLLM can serve. docs/models.md has the
corpus, sizes, training times and held-out perplexities.
"""

from specplug.zoo.shipped import ZooError, zoo_model  # noqa: F401,E402
