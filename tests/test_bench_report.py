"""The benchmark report's arithmetic: medians over repeats, paired speedups, identity, τ."""

from specplug.bench import report
from specplug.bench.suite import SuiteResult, Variant


def phase(elapsed, outputs, drafts=0, drafted=0, accepted=0):
    return {"concurrency": 2, "num_prompts": len(outputs), "elapsed_s": elapsed,
            "output_tokens": sum(len(o) for o in outputs), "outputs": outputs,
            "num_drafts": drafts, "num_draft_tokens": drafted, "num_accepted_tokens": accepted}


def result(*runs):
    first, *rest = [{"ok": True, "phases": {"c2": r}} for r in runs]
    return dict(first, repeats=rest) if rest else first


OUT = [[1, 2, 3, 4], [5, 6, 7, 8]]  # 8 output tokens per run


def test_single_run_speedup_tau_and_identity():
    base = SuiteResult(Variant("no speculation", None), result(phase(2.0, OUT)))
    spec = SuiteResult(Variant("x", {}), result(phase(1.0, [[1, 2, 3, 4], [5, 6, 0, 0]], 4, 12, 6)))
    rows = report.rows([base, spec])
    assert rows[1]["tok_per_s"] == 8.0 and rows[1]["speedup"] == 2.0
    assert rows[1]["tau"] == 1 + 6 / 4 and rows[1]["identical"] == "1/2"
    assert rows[1]["differing"] == [{"prompt": 1, "run": 0, "position": 2, "lengths": [4, 4]}]
    assert "(" not in report.markdown(rows).splitlines()[-1].split("|")[5]  # no spread for one run


def test_repeats_pair_rounds_and_take_medians():
    # the machine slows down in round 2: paired ratios stay 2.0, unpaired ones would not
    base = SuiteResult(Variant("no speculation", None), result(phase(2.0, OUT), phase(4.0, OUT), phase(2.0, OUT)))
    spec = SuiteResult(Variant("x", {}), result(phase(1.0, OUT, 2, 4, 2), phase(2.0, OUT, 2, 4, 2),
                                                phase(1.0, [[0], [0]], 2, 4, 2)))
    rows = report.rows([base, spec])
    r = rows[1]
    assert r["runs"] == 3 and r["tok_per_s"] == 4.0 and r["tok_per_s_runs"] == [8.0, 4.0, 2.0]
    assert r["speedup"] == 2.0 and r["speedup_runs"][:2] == [2.0, 2.0]
    assert r["drafted"] == 12 and r["accepted"] == 6 and r["tau"] == 1 + 6 / 6
    assert r["identical"] == "0/2"  # the worst run counts
    assert [(d["prompt"], d["run"], d["position"]) for d in r["differing"]] == [(0, 2, 0), (1, 2, 0)]
    line = report.markdown(rows).splitlines()[-1]
    assert "4.0 (2–8)" in line and "2.00× (" in line


def test_interleaved_rounds_compare_each_part_with_the_baselines_same_part():
    # --interleave: every run is another part of the phase's prompts, so run k is checked against
    # the baseline's run k and every part counts (not the worst run against run 0's prompts)
    part1, part2 = [[1, 2], [3, 4]], [[5, 6], [7, 8]]
    base = SuiteResult(Variant("no speculation", None), dict(result(phase(2.0, part1), phase(4.0, part2)),
                                                             interleaved_rounds=2))
    spec = SuiteResult(Variant("x", {}), dict(result(phase(1.0, part1), phase(2.0, [[5, 6], [7, 0]])),
                                              interleaved_rounds=2))
    r = report.rows([base, spec])[1]
    assert r["identical"] == "3/4" and r["prompts"] == 4 and r["output_tokens"] == 8
    assert r["speedup_runs"] == [2.0, 2.0]
    assert r["differing"] == [{"prompt": 3, "run": 1, "position": 1, "lengths": [2, 2]}]


def test_interleaving_cuts_every_phase_into_consecutive_parts():
    import pytest

    from specplug.bench.suite import split_phases

    phases = [{"name": "c1", "concurrency": 1, "offset": 0, "num": 5},
              {"name": "c4", "concurrency": 4, "offset": 5}]  # no num: the prompts from offset on
    rounds = split_phases(phases, 3, num_prompts=17)
    assert [[(p["offset"], p["num"]) for p in r] for r in rounds] == [[(0, 1), (5, 4)], [(1, 2), (9, 4)],
                                                                      [(3, 2), (13, 4)]]
    assert all(p["concurrency"] == q["concurrency"] for r in rounds for p, q in zip(r, phases))
    with pytest.raises(ValueError, match="'c1' has only 5 prompts"):
        split_phases(phases, 6, num_prompts=17)


def test_failed_configuration_is_reported_not_dropped():
    base = SuiteResult(Variant("no speculation", None), result(phase(2.0, OUT)))
    bad = SuiteResult(Variant("y", {}), {"ok": False, "error": "boom"})
    rows = report.rows([base, bad])
    assert rows[1]["error"] == "boom" and "not run: boom" in report.markdown(rows)


def test_default_variants_include_drafter_methods_only_with_a_drafter():
    from specplug.commands.bench import default_specplug_variants

    labels = [v.label for v in default_specplug_variants()]
    assert labels == ["specplug rasd", "specplug recycling", "specplug suffix"]
    with_drafters = default_specplug_variants({"draft_model": "/d", "dllm_model": "/m"}, budget=6, swift={})
    by_label = {v.label: v.speculative_config for v in with_drafters}
    assert set(by_label) == {"specplug rasd", "specplug recycling", "specplug suffix", "specplug dyspec",
                             "specplug dyspec (tree)", "specplug dllm", "specplug swift"}
    assert by_label["specplug dyspec (tree)"]["specplug"]["dyspec"]["draft_model"] == "/d"
    assert by_label["specplug dyspec (tree)"]["specplug"]["tree"] is True
    assert by_label["specplug dllm"]["specplug"]["dllm"]["draft_model"] == "/m"
    assert {by_label[k]["num_speculative_tokens"] for k in by_label if "dyspec" in k or "dllm" in k or "swift" in k} == {6}


def test_controller_off_turns_off_only_specplug_configs_that_have_it_on():
    from specplug.bench import suite
    from specplug.commands.bench import default_specplug_variants

    variants = [Variant("vllm ngram", {"method": "ngram"}), *default_specplug_variants({"draft_model": "/d"})]
    off = suite.all_controller_off(variants)
    assert off[0] is variants[0]  # not a specplug config: unchanged
    assert [v.label for v in off[1:3]] == ["specplug dyspec (no controller)", "specplug dyspec (tree, no controller)"]
    assert {v.speculative_config["specplug"]["controller"] for v in off[1:]} == {"off"}
    assert suite.all_controller_off(off) == off and suite.without_controller(off) == []


def test_every_shipped_config_loads():
    from pathlib import Path

    from specplug.config import load

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        cfg = load(path)
        assert cfg.to_dict()["method"] == cfg.method, path


def test_per_category_phases_are_disjoint_and_pivoted():
    import argparse

    from specplug.commands.bench import _phases

    args = argparse.Namespace(dataset=None, categories=None, per_category=True, single_prompts=2, num_prompts=16)
    rows, phases = _phases(args, [16, 1])
    assert phases[0] == {"name": "c16", "concurrency": 16, "offset": 0, "num": 16}
    cats = [p["name"][3:] for p in phases[1:]]
    assert len(cats) == len(set(cats)) == 10
    for p in phases[1:]:
        assert {r["category"] for r in rows[p["offset"]: p["offset"] + p["num"]]} == {p["name"][3:]}
    ids = [r["question_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 16 + 2 * 10

    def res(phs):
        return {"ok": True, "phases": phs}

    a = {"c1 math": dict(phase(1.0, OUT, 2, 6, 4), concurrency=1), "c1 stem": dict(phase(4.0, OUT, 2, 6, 0), concurrency=1)}
    table = report.rows([SuiteResult(Variant("x", {}), res(a))])
    md = report.category_markdown(table).splitlines()
    assert md[2] == "| math | 3.00 / 8.0 |" and md[3] == "| stem | 1.00 / 2.0 |"
    assert md[4] == "| **all** | 2.00 / 3.2 |"  # (4 + 0) / (2 + 2) accepted per draft; 16 tokens in 5 s
