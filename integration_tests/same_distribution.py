"""Chi-square homogeneity of sampled outputs with and without speculation, position by position."""

from __future__ import annotations

import numpy as np


def assert_same_token_frequencies(got: list[list[int]], want: list[list[int]], positions: int,
                                  min_count: int = 10, alpha: float = 1e-3) -> None:
    """For each output position, the token counts of the two runs must pass a chi-square
    homogeneity test; tokens seen fewer than ``min_count`` times in both runs together are pooled
    into one column so that every expected count is large enough."""
    from scipy.stats import chi2_contingency

    for pos in range(positions):
        a = [o[pos] for o in got if len(o) > pos]
        b = [o[pos] for o in want if len(o) > pos]
        tokens = sorted(set(a) | set(b))
        table = np.array([[a.count(t) for t in tokens], [b.count(t) for t in tokens]])
        common = table.sum(0) >= min_count
        table = np.column_stack([table[:, common], table[:, ~common].sum(1)]) if (~common).any() else table
        table = table[:, table.sum(0) > 0]
        if table.shape[1] > 1:
            p = chi2_contingency(table).pvalue
            assert p > alpha, f"position {pos}: token frequencies differ from no speculation (p={p:.2g})"
