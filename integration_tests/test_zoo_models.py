"""The reference models trained here (specplug/zoo), in real vLLM: each shipped decoder loads and
its greedy output equals transformers' on the same weights; on the trained target, specplug's
proposers are lossless and accept real drafts (a model that learned code, not a random one)."""

from __future__ import annotations

import json
import re

import pytest

from integration_tests.same_distribution import assert_same_token_frequencies
from specplug.bench.suite import Variant, run_variant
from specplug.config import SpecplugConfig

pytestmark = pytest.mark.integration

NUM_PROMPTS, PROMPT_TOKENS, MAX_TOKENS = 6, 64, 48


@pytest.fixture(scope="module")
def code_prompts():
    """The first tokens of held-out standard-library files (never trained on)."""
    from transformers import AutoTokenizer

    from specplug.zoo import zoo_model
    from specplug.zoo.samples import held_out_prompts

    return held_out_prompts(AutoTokenizer.from_pretrained(zoo_model("target")), NUM_PROMPTS, PROMPT_TOKENS)


def _request(model: str, prompts, concurrency: int = 1) -> dict:
    return {"model": model, "dtype": "float32", "max_model_len": 512, "max_tokens": MAX_TOKENS,
            "prompts": prompts, "phases": [{"name": "batch", "concurrency": concurrency}]}


def _transformers_greedy(folder, prompts) -> list[list[int]]:
    import torch

    from specplug.zoo.shipped import load_for_eval

    model = load_for_eval(folder)
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            for _ in range(MAX_TOKENS):
                nxt = model(input_ids=ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
                if int(nxt) == 1:  # </s>: vLLM stops there too
                    break
            out.append(ids[0, len(p):].tolist())
    return out


@pytest.fixture(scope="module")
def target_baseline(code_prompts, tmp_path_factory):
    from specplug.zoo import zoo_model

    res = run_variant(Variant("none", None), _request(str(zoo_model("target")), code_prompts),
                      tmp_path_factory.mktemp("zoo"))
    assert res.get("ok"), res.get("error")
    return res["phases"]["batch"]


@pytest.mark.parametrize("name", ["target", "draft"])
def test_vllm_serves_the_shipped_decoder_like_transformers(name, code_prompts, target_baseline, tmp_path):
    from specplug.zoo import zoo_model

    folder = zoo_model(name)
    if name == "target":
        got = target_baseline["outputs"]
    else:
        res = run_variant(Variant("none", None), _request(str(folder), code_prompts), tmp_path)
        assert res.get("ok"), res.get("error")
        got = res["phases"]["batch"]["outputs"]
    assert got == _transformers_greedy(folder, code_prompts)
    assert len({tuple(o) for o in got}) == len(got)  # different files, different continuations


@pytest.mark.parametrize("config", ["suffix.yaml", "recycling.yaml"])
def test_specplug_on_the_trained_target_is_lossless_and_accepts_drafts(config, configs_dir, code_prompts,
                                                                        target_baseline, tmp_path):
    from specplug.zoo import zoo_model

    cfg = SpecplugConfig.from_yaml(configs_dir / config)
    res = run_variant(Variant(config, cfg.to_vllm()), _request(str(zoo_model("target")), code_prompts), tmp_path)
    assert res.get("ok"), res.get("error")
    got = res["phases"]["batch"]
    assert got["outputs"] == target_baseline["outputs"]
    assert got["num_drafts"] > 0 and got["num_accepted_tokens"] > 0


@pytest.mark.parametrize("config", ["dyspec.yaml", "dyspec-tree.yaml", "dllm.yaml", "swift.yaml",
                                    "swift-tree.yaml"])
def test_model_based_proposers_are_lossless_in_vllm(config, configs_dir, code_prompts, target_baseline, tmp_path):
    """dyspec (draft decoder, chains and trees), dllm (block-diffusion drafter) and swift (the
    target's own weights, layers skipped, skip set searched while serving; chains and caterpillar
    trees) inside vLLM.
    The controller is off so every step drafts: the point is exactness with real drafts."""
    from specplug.zoo import zoo_model

    d = {**SpecplugConfig.from_yaml(configs_dir / config).to_dict(), "controller": "off"}
    if d["method"] == "swift":  # search from scratch, and keep the found set out of the user's cache
        d["swift"] = dict(d["swift"], cache_file=str(tmp_path / "skip-sets.json"), context_window=16)
    cfg = SpecplugConfig.from_dict(d)
    # swift: every read of vLLM's paged KV is checked against a recomputation (not only the first)
    # and every lean draft step against the same step through vLLM's modules
    env = {"SPECPLUG_CHECK_TARGET_KV": "1", "SPECPLUG_CHECK_LEAN_DRAFT": "1"} if d["method"] == "swift" else {}
    res = run_variant(Variant(config, cfg.to_vllm(), env=env), _request(str(zoo_model("target")), code_prompts),
                      tmp_path)
    assert res.get("ok"), res.get("error")
    got = res["phases"]["batch"]
    assert got["outputs"] == target_baseline["outputs"]
    assert got["num_drafts"] > 0 and got["num_accepted_tokens"] > 0
    if d["method"] == "swift":  # the search ran inside the engine and saved what it found
        saved = json.loads((tmp_path / "skip-sets.json").read_text())
        assert list(saved) == [f"{zoo_model('target').resolve()}::default"]
        # it drafted against vLLM's own paged KV (read, never written), checked at the first read
        log = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert "swift reads the target's keys and values from vLLM's paged KV cache" in log, log[-3000:]
        assert "keys and values read from the engine's KV cache match a recomputation" in log
        assert "differ from a recomputation" not in log
        assert "swift drafts with vLLM's own modules of the served model" in log
        assert "draft tokens through vLLM's fused CPU kernels" in log
        assert "swift's lean draft step matches vLLM's modules" in log
        assert "lean draft step differs" not in log


SAMPLED_N, SAMPLED_POSITIONS = 512, 4


def test_sampled_dyspec_trees_keep_the_target_distribution(configs_dir, code_prompts, tmp_path):
    """Sampling at T = 1 with dyspec trees (tree: true): children are drawn from the draft model
    without replacement and the tree patches verify them by recursive rejection. The same prompt is
    sampled many times with and without speculation (request i seeded i in both); per output
    position the token frequencies of the two runs must pass a chi-square homogeneity test."""
    from specplug.zoo import zoo_model

    req = {"model": str(zoo_model("target")), "dtype": "float32", "max_model_len": 512,
           "max_tokens": SAMPLED_POSITIONS, "prompts": [code_prompts[0]] * SAMPLED_N,
           "phases": [{"name": "all", "concurrency": 64}], "sampling": {"temperature": 1.0, "seed": 0}}
    base = run_variant(Variant("sampled none", None), req, tmp_path / "base")
    assert base.get("ok"), base.get("error")
    d = {**SpecplugConfig.from_yaml(configs_dir / "dyspec-tree.yaml").to_dict(), "controller": "off",
         "num_speculative_tokens": 8}
    spec = run_variant(Variant("sampled dyspec", SpecplugConfig.from_dict(d).to_vllm()), req, tmp_path / "spec")
    assert spec.get("ok"), spec.get("error")
    got, want = spec["phases"]["all"]["outputs"], base["phases"]["all"]["outputs"]
    assert got != want  # different random streams: equal lists would mean nothing was sampled
    assert_same_token_frequencies(got, want, SAMPLED_POSITIONS)
    # not vacuous: sampled (stochastic) trees were verified by recursive rejection and accepted
    log = (tmp_path / "spec" / "sampled_dyspec.log").read_text()
    drawn = [int(m) for m in re.findall(r"(\d+) of them drawn by sampling", log)]
    assert drawn and max(drawn) > 0, "no stochastic tree was verified"
    assert spec["phases"]["all"]["num_accepted_tokens"] > SAMPLED_N // 4


def test_a_drafter_with_another_tokenizer_is_refused_naming_both(tiny_model, tmp_path):
    """The zoo draft model against the tiny random target (its own tokenizer): vLLM must not start."""
    cfg = SpecplugConfig(method="dyspec", dyspec={"draft_model": "zoo-draft"})
    res = run_variant(Variant("dyspec", cfg.to_vllm()), _request(str(tiny_model), [[5, 6, 7]]), tmp_path)
    assert not res.get("ok")
    # vLLM's engine core fails at startup; the reason is in the engine process's log
    log = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert "dyspec.draft_model: the drafter" in log, log[-3000:]
    assert "different tokenizers" in log and str(tiny_model) in log and "zoo/weights/draft" in log
