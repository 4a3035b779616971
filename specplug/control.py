"""Goodput controller: how much should each request speculate this step?

Speculation trades extra verify work for accepted tokens. Whether it pays depends on the
batch: at low load the verify forward is memory-bound and extra tokens are almost free; at high
load it is compute-bound and every drafted token costs real time. Fixed batch-size cut-offs get
this wrong in both directions, so (as in SmartSpec, arXiv 2406.14066) the controller maximises
expected *goodput*:

    goodput(k_1..k_B) = sum_i E[tokens_i | k_i] / (T_verify(sum_i (1 + k_i)) + T_propose)

with everything measured online:
- T_verify(n): time of one engine step as a function of the number of scheduled tokens, a linear
  model a + b*n fitted by recursive least squares with forgetting (no hand-tuned tables);
- T_propose: the proposer's measured time per request that drafts;
- E[tokens_i | k]: 1 + alpha_i + ... + alpha_i^k = (1 - alpha_i^(k+1)) / (1 - alpha_i), with alpha_i
  the request's recent per-token acceptance rate (a chain's acceptance model; a tree budget of k
  nodes is treated as k chain tokens, which under-estimates trees and so errs on the cautious side).

The optimisation is exact for this model: the marginal gain of a request's j-th draft token is
alpha_i^j (decreasing in j), so sorting all candidate increments by gain and taking the prefix that
maximises goodput is optimal for a concave-in-tokens numerator over a linear denominator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LinearCostModel:
    """Step time ~ a + b * num_tokens, fitted online by recursive least squares with forgetting."""

    forgetting: float = 0.98
    prior_a: float = 0.02  # seconds; only used until enough samples arrive
    prior_b: float = 0.0005
    _P: np.ndarray = field(default_factory=lambda: np.eye(2) * 1e3)
    _theta: np.ndarray | None = None
    samples: int = 0
    _min_n: float = float("inf")
    _max_n: float = 0.0

    def observe(self, num_tokens: int, seconds: float) -> None:
        x = np.array([1.0, float(num_tokens)])
        if self._theta is None:
            self._theta = np.array([self.prior_a, self.prior_b])
        lam = self.forgetting
        Px = self._P @ x
        gain = Px / (lam + x @ Px)
        self._theta = self._theta + gain * (seconds - x @ self._theta)
        self._P = (self._P - np.outer(gain, Px)) / lam
        self.samples += 1
        self._min_n = min(self._min_n, num_tokens)
        self._max_n = max(self._max_n, num_tokens)

    @property
    def identified(self) -> bool:
        """Enough samples over a wide enough range of token counts to trust the slope."""
        return self.samples >= 8 and self._max_n >= 1.5 * max(self._min_n, 1)

    def predict(self, num_tokens: float) -> float:
        a, b = (self.prior_a, self.prior_b) if self._theta is None else self._theta
        # A fitted slope can be transiently negative (noise); time never falls with more tokens.
        return max(a, 1e-6) + max(b, 0.0) * num_tokens


@dataclass
class AcceptanceTracker:
    """Per-request per-token acceptance rate alpha: an exponentially weighted MLE of the
    geometric acceptance model (accepted trials / all trials), started from a prior."""

    prior: float = 0.5
    prior_weight: float = 2.0
    decay: float = 0.9
    _acc: dict = field(default_factory=dict)

    def alpha(self, req_id) -> float:
        acc, trials = self._acc.get(req_id, (0.0, 0.0))
        return (acc + self.prior * self.prior_weight) / (trials + self.prior_weight)

    def observe(self, req_id, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        # Trials: each accepted token, plus the rejected one if the draft was not fully accepted.
        trials = accepted + (1 if accepted < drafted else 0)
        acc, tr = self._acc.get(req_id, (0.0, 0.0))
        self._acc[req_id] = (acc * self.decay + accepted, tr * self.decay + trials)

    def forget(self, req_id) -> None:
        self._acc.pop(req_id, None)


def expected_tokens(alpha: float, k: int) -> float:
    """E[tokens emitted in one step] with k draft tokens, per-token acceptance alpha (incl. bonus)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class GoodputController:
    """Chooses each request's draft budget (0 = off) to maximise expected tokens per second."""

    max_budget: int = 16
    cost: LinearCostModel = field(default_factory=LinearCostModel)
    acceptance: AcceptanceTracker = field(default_factory=AcceptanceTracker)
    propose_seconds: float = 0.0  # EWMA of proposer time per drafting request
    min_alpha: float = 0.0  # never draft for requests below this acceptance (0: let the model decide)

    def plan(self, req_ids: list) -> dict:
        """{req_id: budget} for this step's batch."""
        batch = len(req_ids)
        if batch == 0:
            return {}
        gains = []  # (marginal expected tokens, request index)
        for i, r in enumerate(req_ids):
            a = self.acceptance.alpha(r)
            if a < self.min_alpha:
                continue
            for j in range(1, self.max_budget + 1):
                gains.append((a ** j, i))
        gains.sort(key=lambda g: -g[0])
        best_m, best_rate = 0, batch / self.cost.predict(batch)
        tokens, extra = float(batch), 0
        drafting = set()
        for m, (g, i) in enumerate(gains, start=1):
            tokens += g
            drafting.add(i)
            rate = tokens / (self.cost.predict(batch + m) + self.propose_seconds * len(drafting))
            if rate > best_rate:
                best_m, best_rate = m, rate
        budgets = [0] * batch
        for g, i in gains[:best_m]:
            budgets[i] += 1
        return {r: budgets[i] for i, r in enumerate(req_ids)}

    def observe_step(self, num_scheduled_tokens: int, seconds: float) -> None:
        self.cost.observe(num_scheduled_tokens, seconds)

    def observe_request(self, req_id, drafted: int, accepted: int) -> None:
        self.acceptance.observe(req_id, drafted, accepted)

    def observe_propose_time(self, seconds_per_request: float, weight: float = 0.1) -> None:
        self.propose_seconds = (1 - weight) * self.propose_seconds + weight * seconds_per_request

    def forget(self, req_id) -> None:
        self.acceptance.forget(req_id)
