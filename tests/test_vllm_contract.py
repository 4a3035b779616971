"""The vLLM contract and patches against the installed vLLM (skipped where vLLM is not installed):
every symbol the patches touch is there, a broken one is named with the version, patches apply
once, and patch 8 only takes the plain path when nothing was drafted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from specplug.engines.vllm import contract, patches  # noqa: E402


def test_installed_vllm_satisfies_the_contract():
    contract.check()


def test_a_broken_symbol_is_named_with_the_installed_version(monkeypatch):
    broken = (contract.Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner.no_such_method"),
              contract.Requirement("vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs",
                                   source=("a line vLLM never had",)))
    monkeypatch.setattr(contract, "REQUIREMENTS", contract.REQUIREMENTS + broken)
    with pytest.raises(contract.VllmContractError) as err:
        contract.check()
    text = str(err.value)
    assert contract.installed_version() in text
    assert "GPUModelRunner.no_such_method: missing" in text
    assert "a line vLLM never had" in text


def test_patches_apply_once_and_two_patches_of_one_method_both_stay():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    patches.apply_all()
    first = GPUModelRunner._prepare_inputs
    patches.apply_all()  # vLLM calls the plugin in every process; a second call must change nothing
    assert GPUModelRunner._prepare_inputs is first
    tags = getattr(first, patches._MARK)
    assert sorted(tags) == ["_prepare_inputs", "plain_step_without_drafts"]  # TreePositions, patch 8


def _runner(drafter, kv_specs):
    return SimpleNamespace(drafter=drafter, kv_cache_config=SimpleNamespace(
        kv_cache_groups=[SimpleNamespace(kv_cache_spec=s) for s in kv_specs]))


def test_plain_step_only_without_drafts_for_specplug_on_attention_models():
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    from specplug.engines.vllm.proposer import SpecplugProposer

    attention = FullAttentionSpec.__new__(FullAttentionSpec)  # only its type is read
    mamba = MambaSpec.__new__(MambaSpec)
    specplug_drafter = SpecplugProposer.__new__(SpecplugProposer)
    none = SimpleNamespace(scheduled_spec_decode_tokens={})
    some = SimpleNamespace(scheduled_spec_decode_tokens={"r1": [5, 6]})
    plain = patches.PlainStepWithoutDrafts.plain
    assert plain(_runner(specplug_drafter, [attention]), none)
    assert not plain(_runner(specplug_drafter, [attention]), some)  # drafts: vLLM's verify path
    assert not plain(_runner(specplug_drafter, [attention, mamba]), none)  # recurrent state: untouched
    assert not plain(_runner(object(), [attention]), none)  # vLLM's own drafters: untouched
