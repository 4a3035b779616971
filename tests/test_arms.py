"""The measured check of the controller's plan (specplug/arms.py): which policy runs, and what
probing the other one costs."""

from __future__ import annotations


from specplug.arms import MeasuredArms


def feed(arms: MeasuredArms, rates: dict, steps: int) -> list[str]:
    """Steps at a fixed tokens-per-second per policy; the policy of every step."""
    seen = []
    for _ in range(steps):
        if arms.probe_due:
            arms.start_probe()
        seen.append(arms.policy)
        arms.step(16, 16 / rates[arms.policy])
    return seen


def test_the_faster_policy_takes_over_and_the_slower_one_is_probed_less_and_less():
    arms = MeasuredArms(window=10, settle=2, first_gap=3, max_gap=16)
    seen = feed(arms, {"model": 100.0, "full": 150.0}, 2000)
    assert seen[0] == "model" and seen[-1] == "full"
    assert abs(arms.rates["full"] - 150.0) < 1e-6
    share_model = seen[1000:].count("model") / 1000
    assert 0 < share_model < 0.05  # probed now and then, aborted early, the gap at its maximum
    assert arms._gap == 16


def test_a_probe_that_falls_behind_ends_early():
    arms = MeasuredArms(window=24, settle=2, min_probe=4, first_gap=2)
    seen = feed(arms, {"model": 100.0, "full": 40.0}, 24 * 3 + 10)
    first_probe = seen.index("full")
    assert first_probe == 48
    assert seen[first_probe:].count("full") == 2 + 4  # settle + min_probe steps, not the window
    assert arms.policy == "model" and arms._gap == 4


def test_a_declined_probe_counts_as_lost():
    arms = MeasuredArms(window=5, first_gap=2, max_gap=8)
    for _ in range(10):
        arms.step(16, 0.1)
    assert arms.probe_due
    arms.skip_probe()
    assert not arms.probe_due and arms.policy == "model" and arms._gap == 4


def test_probing_a_mildly_worse_policy_costs_little():
    """Full budgets ~10% slower than the plan (cheap tokens, low acceptance): the model's screen
    lets the probes run, the early end and the growing gap keep their cost small."""
    from tests.test_budgeting import simulate

    args = dict(a=0.003, b=1e-5, alphas={f"r{i}": 0.2 for i in range(16)}, steps=3000)
    _, with_probes, log = simulate(**args)
    _, without, _ = simulate(**args, arms=MeasuredArms(first_gap=10**9))
    assert with_probes >= 0.98 * without
    assert any(all(v == 8 for v in pl.values()) for pl in log)  # not vacuous: full was probed


def test_each_batch_size_class_has_its_own_check():
    """Tokens per second at concurrency 1 and 16 are not comparable: measured rates and the
    policy that won are kept per batch size class (the nearest power of two: 1, 2, 3-5, 6-11,
    12-22, ...), so a batch of 16 that drops to 15 or 14 as requests finish keeps one check."""
    from specplug.budgeting import BudgetPlanner, batch_class, batch_class_range

    assert [batch_class(n) for n in (1, 2, 3, 5, 6, 11, 12, 16, 22, 23)] == [1, 2, 4, 4, 8, 8, 16, 16, 16, 32]
    for key in (1, 2, 4, 8, 16, 32, 64):
        lo, hi = batch_class_range(key)
        assert {batch_class(n) for n in range(lo, hi + 1)} == {key}
        assert batch_class(lo - 1) != key and batch_class(hi + 1) != key
    t = [0.0]
    p = BudgetPlanner(4, clock=lambda: t[0])
    for n in (1, 16, 15, 5, 1):
        p.step_started(n, has_new_requests=False, num_requests=n)
        p.budgets([f"r{i}" for i in range(n)])
        t[0] += 0.01
        p.step_finished(0)
    assert sorted(p._arms) == [1, 4, 16]
    # the first step has no interval before it to measure
    assert p.arms is p._arms[1] and [p._arms[k]._step for k in (1, 4, 16)] == [1, 1, 2]


def test_steps_that_admit_requests_are_not_counted():
    """A step with new requests runs their prefill, the same under either policy and many times a
    decode step: left out of the measured rates, or how many of them a window holds decides."""
    from specplug.budgeting import BudgetPlanner

    t = [0.0]
    p = BudgetPlanner(4, clock=lambda: t[0])
    ids = [f"r{i}" for i in range(4)]
    for step in range(200):
        admitted = step % 5 == 0
        t[0] += 0.05 if admitted else 0.01  # a prefill step: 50 ms, a decode step: 10 ms
        p.step_started(4, has_new_requests=admitted, num_requests=4)
        for r in ids:
            p.committed(r, [1])
        p.budgets(ids)
        p.step_finished(0)
    assert abs(p.arms.rates["model"] - 400.0) < 1e-6  # 4 tokens per 10 ms: the decode steps only


def test_the_log_summary_names_each_class_and_the_last_screen():
    from specplug.budgeting import BudgetPlanner

    t = [0.0]
    p = BudgetPlanner(4, clock=lambda: t[0])
    for n in (16, 15, 3):
        p.step_started(n, has_new_requests=False, num_requests=n)
        p.budgets([f"r{i}" for i in range(n)])
        t[0] += 0.01
        p.step_finished(0)
    s = p.summary()
    assert "batch 3-5: model" in s and "batch 12-22: model" in s and "predicted -x at the last" in s


def test_an_idle_engine_does_not_count_against_the_policy_that_was_running():
    """Between bursts of requests (or benchmark rounds) the engine idles; that interval is not a
    step of whichever policy ran last."""
    from specplug.budgeting import BudgetPlanner

    t = [0.0]
    p = BudgetPlanner(4, clock=lambda: t[0])
    ids = [f"r{i}" for i in range(4)]
    for step in range(40):
        t[0] += 30.0 if step == 20 else 0.01  # half a minute without requests
        p.step_started(4, has_new_requests=False, num_requests=4)
        for r in ids:
            p.committed(r, [1])
        p.budgets(ids)
        p.step_finished(0)
    assert p.arms.rates["model"] > 300  # 4 tokens per 10 ms, the idle half minute left out


def test_a_window_of_fast_steps_lasts_long_enough_to_measure():
    arms = MeasuredArms(window=24, settle=2, min_seconds=0.3)
    for _ in range(200):
        arms.step(1, 0.001)  # 1 ms steps: 24 of them would be 24 ms of a noisy machine
    assert arms.rates["model"] is None and arms._step == 200
    for _ in range(102):
        arms.step(1, 0.001)
    assert abs(arms.rates["model"] - 1000.0) < 1e-6 and arms._step == 0


def test_the_screen_prices_full_budgets_at_what_the_proposer_sends():
    """Lookup proposers (suffix, rasd) send ~4 tokens per request at a budget of 16. Charged for
    16, full budgets looked ~0.6x of the plan and their probe was declined, where they measured
    ~1.2x; priced at the tokens sent with a full budget, the probe runs."""
    from specplug.budgeting import BudgetPlanner

    t = [0.0]
    p = BudgetPlanner(16, clock=lambda: t[0])
    ids = [f"r{i}" for i in range(16)]
    c = p.controller
    for i in range(300):  # a step: 3.5 ms + 0.05 ms per token, no fixed cost for drafts
        n = 16 + (i % 7) * 12
        c.observe_step(n, 0.0035 + 5e-5 * n, i % 7 > 0, 16)
    c.observe_propose_time(1e-4)
    for r in ids:
        for _ in range(20):
            c.observe_request(r, 4, 2)  # first token accepted, then 80%: runs of two or three
    p.budgets(ids)
    p._planned = {r: 16 for r in ids}  # every request was given a full budget ...
    for _ in range(400):
        for r in ids:
            p.drafted(r, [7] * 4, sent=True)  # ... and sent 4 tokens
    assert abs(p.full_yield - 4.0) < 1e-9
    p.arms.probe_due = True
    p._probe_or_skip(ids)
    priced_at_yield, probes = p.arms.screened, p.arms.probes
    p.full_yield = None  # the budget charged, as before
    p._arms.clear()
    p.arms.probe_due = True
    p._probe_or_skip(ids)
    assert p.arms.screened < p.probe_screen <= priced_at_yield, (p.arms.screened, priced_at_yield)
    assert probes == 1 and p.arms.declined == 1


def test_the_model_is_calibrated_by_what_its_predictions_measured():
    arms = MeasuredArms(window=10, settle=2, min_seconds=0.0)
    for _ in range(10):
        arms.predicted(200.0)  # the model expects 200 tokens/s ...
        arms.step(1, 0.01)  # ... and the steps serve 100
    assert abs(arms.calibration["model"] - 0.5) < 1e-9 and arms.calibration["full"] is None
    assert abs(arms.calibrated("model", 300.0) - 150.0) < 1e-9 and arms.calibrated("full", 300.0) == 300.0


def _screened_planner(t):
    """A planner whose model predicts full budgets close to its plan (the screen lets probes run)."""
    from specplug.budgeting import BudgetPlanner

    p = BudgetPlanner(16, clock=lambda: t[0])
    c = p.controller
    for i in range(300):
        n = 16 + (i % 7) * 12
        c.observe_step(n, 0.0035 + 5e-5 * n, i % 7 > 0, 16)
    c.observe_propose_time(1e-4)
    p.full_yield = 4.0
    return p


def _run_steps(p, t, n: int, steps: int) -> None:
    ids = [f"r{i}" for i in range(n)]
    for _ in range(steps):
        t[0] += 0.01
        p.step_started(n, has_new_requests=False, num_requests=n)
        for r in ids:
            p.committed(r, [1])
        p.budgets(ids)
        p.step_finished(0)


def test_the_first_probe_comes_early_where_full_budgets_won_in_another_class():
    """Which policy wins changes slowly with the batch size: where full budgets run in another
    class, a new class probes them after two windows instead of eight (windows of 30 steps)."""
    from specplug.arms import MeasuredArms

    t = [0.0]
    early = _screened_planner(t)
    early._arms[4] = MeasuredArms(policy="full")  # full budgets won at batch size 4
    _run_steps(early, t, 16, 3 * 30 + 5)
    assert early._arms[16].probes == 1  # after the second window

    t2 = [0.0]
    alone = _screened_planner(t2)
    _run_steps(alone, t2, 16, 3 * 30 + 5)
    assert alone._arms[16].probes == 0  # no other class: the regular first probe, later
    _run_steps(alone, t2, 16, 6 * 30)
    assert alone._arms[16].probes == 1
