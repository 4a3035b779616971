"""The interleaved benchmark's memory check (specplug/bench/memory.py): it stops a run whose
engines will not fit beside each other, and names what to change."""

from specplug.bench.memory import GIB, shortfall


def test_nine_engines_do_not_fit_in_twenty_four_gib_and_seven_do():
    # as measured on the 24 GiB VM: 2.8 GiB per tiny-model engine once up; nine were OOM-killed,
    # seven ran
    msg = shortfall(before=22.8 * GIB, after_first=20.0 * GIB, remaining=8)
    assert msg is not None
    assert "2.8 GiB" in msg and "--no-builtin" in msg and "--ablate-controller" in msg and "room for ~7 engines" in msg
    assert shortfall(before=22.8 * GIB, after_first=20.0 * GIB, remaining=6) is None


def test_no_measurement_no_verdict():
    assert shortfall(None, 20 * GIB, 8) is None and shortfall(24 * GIB, None, 8) is None
    assert shortfall(24 * GIB, 21 * GIB, 0) is None
