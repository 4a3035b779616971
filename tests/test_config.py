"""SpecplugConfig: YAML/dict loading, validation errors that name the key, engine views."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from specplug.config import VLLM_PAYLOAD_KEY, VLLM_PROPOSER_CLASS, SpecplugConfig, SpecplugConfigError, load
from specplug.proposers import Proposer, ProposerOptions, register
from specplug.tree import DraftTree


class EchoOptions(ProposerOptions):
    depth: int = Field(4, ge=1)
    label: str = "x"


class EchoProposer(Proposer):
    """Test-only proposer: drafts the last `depth` tokens again."""

    name = "echo_for_tests"
    Options = EchoOptions

    def propose(self, batch, budget):
        return [DraftTree.chain(list(r.token_ids[-self.options.depth:])[: b.max_nodes]) for r, b in zip(batch, budget)]


register("echo_for_tests", f"{__name__}:EchoProposer")


def test_section_layout_round_trips(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: echo_for_tests\nnum_speculative_tokens: 8\necho_for_tests:\n  depth: 3\n")
    cfg = load(f)
    assert cfg.num_speculative_tokens == 8 and cfg.options.depth == 3 and cfg.tree is False
    assert SpecplugConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(cfg.to_json())["echo_for_tests"] == {"depth": 3, "label": "x"}
    assert isinstance(cfg.build_proposer(), EchoProposer)


def test_json_file_is_accepted(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"method": "echo_for_tests", "echo_for_tests": {"label": "y"}}))
    assert load(f).options.label == "y"


@pytest.mark.parametrize(
    "data, key",
    [
        ({"method": "echo_for_tests", "echo_for_tests": {"depth": 0}}, "echo_for_tests.depth"),
        ({"method": "echo_for_tests", "echo_for_tests": {"dpeth": 2}}, "echo_for_tests.dpeth: unknown key"),
        ({"method": "echo_for_tests", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "echo_for_tests", "num_speculative_tokens": 500}, "num_speculative_tokens"),
        ({"method": "echo_for_tests", "num_speculative_tokens": "many"}, "num_speculative_tokens"),
        ({"method": "echo_for_tests", "tree": "maybe"}, "tree"),
        ({"method": "echo_for_tests", "controller": "smart"}, "controller"),
        ({"method": "echo_for_tests", "speculative_tokens": 3}, "speculative_tokens: unknown key"),
        ({"method": "nope"}, "method: unknown method 'nope'"),
        ({"method": "swift", "swift": {"skip_ratio": 2}}, "swift.skip_ratio"),
        ({"method": "dyspec"}, "dyspec.draft_model: Field required"),
        ({"num_speculative_tokens": 3}, "method: a method name is required"),
        ({"method": "echo_for_tests", "echo_for_tests": [1, 2]}, "echo_for_tests: must be a mapping"),
    ],
)
def test_errors_name_the_key(data, key):
    with pytest.raises(SpecplugConfigError) as e:
        SpecplugConfig.from_dict(data)
    assert key in str(e.value)


def test_missing_and_bad_files_are_named(tmp_path):
    with pytest.raises(SpecplugConfigError, match="file not found"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(SpecplugConfigError, match="not valid YAML"):
        load(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("method: echo_for_tests\necho_for_tests: {depth: -1}\n")
    with pytest.raises(SpecplugConfigError, match=r"echo_for_tests\.depth.*wrong\.yaml"):
        load(wrong)


def test_to_vllm_is_a_stock_custom_class_config_plus_payload():
    cfg = SpecplugConfig(method="echo_for_tests", num_speculative_tokens=5, echo_for_tests={"depth": 2})
    d = cfg.to_vllm()
    assert d["method"] == "custom_class" and d["model"] == VLLM_PROPOSER_CLASS
    assert d["num_speculative_tokens"] == 5
    assert SpecplugConfig.from_dict(d[VLLM_PAYLOAD_KEY]) == cfg


def test_config_is_immutable():
    cfg = SpecplugConfig(method="echo_for_tests")
    with pytest.raises(Exception):
        cfg.num_speculative_tokens = 3
