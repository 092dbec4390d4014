"""Rank statistics of the models on one metric (Demšar 2006): the models ranked within each block
(a held-out split and seed), Friedman's test that they all rank alike (``scipy.stats``), and
Nemenyi's post-hoc test of every pair (``scikit_posthocs``), from which the verdict says which
differences between the top models are significant and the critical-difference diagram is
drawn (``pertflow.benchmark.figures.critical_difference``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

from pertflow.benchmark.summary import PAIR_COLUMNS

ALPHA = 0.05


@dataclass(frozen=True)
class RankTest:
    """One metric's rank statistics over ``n_blocks`` blocks (split and seed) where every model
    has a value."""

    metric: str
    n_blocks: int
    mean_ranks: pd.Series  # model → mean rank (1: best), best first
    friedman_p: float
    nemenyi: pd.DataFrame  # model × model p-values

    def p_value(self, a: str, b: str) -> float:
        return float(self.nemenyi.loc[a, b])

    def top_pairs(self, n: int = 2) -> list[tuple[str, str, float]]:
        """The best-ranked model against each of the ``n`` next ones: (best, other, Nemenyi p)."""
        models = list(self.mean_ranks.index)
        return [(models[0], other, self.p_value(models[0], other)) for other in models[1:n + 1]]


def blocks(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Blocks (perturbation, group, seed) × models of ``metric``, only the blocks where every
    model has a value."""
    return table.pivot_table(index=PAIR_COLUMNS, columns="model", values=metric,
                             dropna=False).dropna()


def rank_test(table: pd.DataFrame, metric: str, direction: str) -> RankTest | None:
    """The rank statistics of ``metric`` (``direction`` "higher" or "lower" is better) in the
    metrics ``table``; None with fewer than three models or two complete blocks (Friedman's test
    needs them), or where every block ties every model (nothing to rank)."""
    values = blocks(table, metric)
    if values.shape[1] < 3 or values.shape[0] < 2:
        return None
    ranks = values.rank(axis=1, ascending=direction == "lower")
    if (ranks.nunique(axis=1) == 1).all():
        return None
    friedman = stats.friedmanchisquare(*(values[m].to_numpy() for m in values.columns))
    nemenyi = sp.posthoc_nemenyi_friedman(values)
    mean_ranks = ranks.mean().sort_values(kind="stable")
    return RankTest(metric, len(values), mean_ranks, float(friedman.pvalue),
                    nemenyi.loc[values.columns, values.columns])


def format_p(p: float) -> str:
    """A p-value in fixed decimals: ``"0.031"``, ``"< 0.001"``."""
    return "n/a" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")
