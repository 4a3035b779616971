"""`specplug bench --max-tokens-spread`: each prompt's output length, drawn once and the same for
every configuration of a run (specplug/bench/workload.py)."""

from __future__ import annotations

import pytest

from specplug.bench.engine_run import max_tokens_for
from specplug.bench.workload import output_lengths


def test_lengths_are_spread_around_max_tokens_and_repeatable():
    lengths = output_lengths(200, 128, 0.5)
    assert lengths == output_lengths(200, 128, 0.5)  # every configuration gets the same lengths
    assert min(lengths) >= 64 and max(lengths) <= 192
    assert min(lengths) < 80 and max(lengths) > 176  # the whole range is used
    assert abs(sum(lengths) / len(lengths) - 128) < 8
    assert output_lengths(10, 128, 0.0) is None  # no spread: every request max_tokens


def test_a_bad_spread_names_the_flag():
    with pytest.raises(ValueError, match="--max-tokens-spread"):
        output_lengths(4, 128, 1.0)


def test_each_prompt_index_reads_its_own_length():
    req = {"max_tokens": 128, "max_tokens_per_prompt": [70, 150, 99]}
    assert [max_tokens_for(req, i) for i in range(3)] == [70, 150, 99]
    assert max_tokens_for({"max_tokens": 128}, 5) == 128
