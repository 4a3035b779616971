"""SGLang end to end on a CUDA GPU: each SPECPLUG_* algorithm served by stock SGLang (through the
plugin entry point, scheduler in its own spawned process) on the tiny fp32 Llama, greedy output
token-identical to SGLang without speculation, and SGLang's own `spec_accept_length` > 1.

Needs a CUDA GPU and a CUDA build of sglang 0.5.23 with its dependencies; skipped elsewhere with
the reason. Run: `python -m pytest -m gpu integration_tests/test_sglang_gpu.py -s`; with
SPECPLUG_RESULTS=FILE it also writes one JSON line per configuration (for docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: SGLang's end-to-end suite runs on a GPU machine", allow_module_level=True)
try:
    import sglang as sgl
    from sglang.srt.entrypoints.engine import Engine  # noqa: F401  (imports the CUDA runtime stack)
except Exception as e:  # noqa: BLE001
    pytest.skip(f"a CUDA sglang does not import here: {e}", allow_module_level=True)

from specplug.config import SpecplugConfig  # noqa: E402

PROMPTS = [
    [1, 2, 3, 4, 5, 6, 7, 8] * 4,
    list(range(100, 164)),
    [42] * 20 + list(range(300, 340)),
    [7, 9, 11, 13] * 10,
]
MAX_NEW = 96
ENGINE_ARGS = dict(dtype="float32", skip_tokenizer_init=True, mem_fraction_static=0.3, disable_cuda_graph=True,
                   attention_backend="triton", max_running_requests=8, log_level="warning")
CASES = [("suffix", False), ("suffix", True), ("recycling", True), ("rasd", False), ("rasd", True)]


def _generate(model: str, **spec_kwargs):
    llm = sgl.Engine(model_path=model, **ENGINE_ARGS, **spec_kwargs)
    try:
        outs = llm.generate(input_ids=PROMPTS, sampling_params={"temperature": 0, "max_new_tokens": MAX_NEW,
                                                               "ignore_eos": True})
    finally:
        llm.shutdown()
    return [o["output_ids"] for o in outs], [o["meta_info"] for o in outs]


@pytest.fixture(scope="module")
def baseline(tiny_model):
    ids, _ = _generate(tiny_model)
    return ids


@pytest.mark.parametrize("method,tree", CASES)
def test_sglang_greedy_identical_and_accepts_more_than_one(tiny_model, baseline, method, tree):
    cfg = SpecplugConfig(method=method, num_speculative_tokens=8, tree=tree)
    ids, meta = _generate(tiny_model, **cfg.to_sglang())
    accept = [m.get("spec_accept_length") for m in meta]
    record = {"method": method, "tree": tree, "identical": ids == baseline, "spec_accept_length": accept,
              "sglang": sgl.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name()}
    print(json.dumps(record))
    if os.environ.get("SPECPLUG_RESULTS"):
        with open(os.environ["SPECPLUG_RESULTS"], "a") as f:
            f.write(json.dumps(record) + "\n")
    assert ids == baseline
    assert sum(a for a in accept if a) / len(accept) > 1.0
