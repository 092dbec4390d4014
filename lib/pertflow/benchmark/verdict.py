"""The verdict of one dataset: per metric the winning model and the strongest baseline, every
learned model against that baseline, and what the transferring models chose; per perturbation
where a dataset has several, each judged on its own runs. ``verdict_of`` makes the comparisons
once (a ``Verdict``); ``pertflow.benchmark.verdict_text`` only formats it (summary.md,
verdict.rst)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pertflow.benchmark.metrics import VERDICT_METRICS, calibrated_column, ceiling_column
from pertflow.benchmark.ranks import rank_test
from pertflow.benchmark.summary import (
    PAIR_COLUMNS,
    best,
    comparisons,
    mean_interval,
    of_perturbation,
    perturbations_of,
    transfer_overview,
)


@dataclass(frozen=True)
class Difference:
    """A model's value minus the strongest baseline's on one metric, paired by split and seed:
    mean, 95% t-interval (NaN from a single pair) and number of pairs."""

    mean: float
    ci_low: float
    ci_high: float
    n_pairs: int
    better: bool  # than the baseline, whatever the metric's direction
    excludes_zero: bool  # the interval, on the side of ``better``


@dataclass(frozen=True)
class RunnerUp:
    """The best of the other models, where the strongest baseline wins a metric."""

    model: str
    is_baseline: bool
    mean: float
    behind: float | None  # how far it trails the winner; None: as good (np.isclose)


@dataclass(frozen=True)
class Interval:
    """A mean over runs with its 95% t-interval (NaN from a single run) and number of runs."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class Calibration:
    """A metric's calibrated scores (0: `control`, 1: the ceiling, the metric between two
    random halves of the real perturbed cells), over the runs that have one."""

    ceiling: float  # the mean ceiling over splits and seeds; NaN where none has one
    winner: Interval | None  # None: no calibrated score
    baseline: Interval | None  # the strongest baseline's; None: none or no calibrated score


@dataclass(frozen=True)
class Ranking:
    """Rank statistics of one metric (``pertflow.benchmark.ranks``): Friedman's test over the
    blocks (split and seed) and the best-ranked model against the next ones (Nemenyi)."""

    n_blocks: int
    friedman_p: float
    mean_ranks: dict[str, float]  # best first
    pairs: list[tuple[str, str, float]]  # (best, other, Nemenyi p)


@dataclass(frozen=True)
class MetricResult:
    """One metric: its winner over every split and seed, and the strongest baseline."""

    metric: str
    better: str  # "higher" or "lower"
    winner: str
    mean: float
    tied: list[str]  # the other models as good as the winner
    groups_won: int  # splits where the winner is best (a tie counts for each tied model)
    n_groups: int
    baseline: str | None  # the strongest baseline; None where no baseline has a value
    baseline_mean: float
    differences: dict[str, Difference | None]  # every model's, None without a baseline
    runner_up: RunnerUp | None  # where the winner is the strongest baseline and not alone
    calibration: Calibration | None = None
    ranking: Ranking | None = None  # None: fewer than three models or two complete blocks


@dataclass(frozen=True)
class Standing:
    """A learned (non-baseline) model against the strongest baseline of every metric."""

    model: str
    n_metrics: int
    ahead: list[str]  # the metrics on which it is better than the baseline
    n_excluding_zero: int  # of those, the metrics whose interval excludes zero


@dataclass(frozen=True)
class GroupChoice:
    """What a transferring model chose for one held-out group, over its seeds."""

    group: str
    settings: str
    alpha: float
    inner_score: float
    top_weights: str  # the most weighted training groups; empty where none is recorded


@dataclass(frozen=True)
class ModelTransfer:
    model: str
    alpha: float  # mean over its runs
    n_runs: int
    groups: list[GroupChoice]


@dataclass(frozen=True)
class Section:
    """The verdict on the runs of one perturbation (``perturbation`` None: the dataset's runs,
    where it has one perturbation)."""

    perturbation: str | None
    n_runs: int
    n_models: int
    groups: list[str]
    seeds: list[int]
    baselines: list[str]
    metrics: list[MetricResult]
    learned: list[Standing]  # empty without a baseline
    transfer: list[ModelTransfer] | None  # None: no transfer table given


@dataclass(frozen=True)
class Verdict:
    dataset: str
    n_runs: int
    n_models: int
    seeds: list[int]
    baselines: list[str]
    sections: list[Section]
    warnings: list[str]  # the preprocessing's, repeated below the verdict

    @property
    def several(self) -> bool:
        return len(self.sections) > 1


def verdict_of(dataset: str, table: pd.DataFrame, baseline_names: list[str],
               transfer: pd.DataFrame | None = None, warnings: Iterable[str] = ()) -> Verdict:
    """The verdict on the metrics ``table`` of ``dataset``, the baselines being the models of
    ``baseline_names``; with the ``transfer`` table (``transfer_table``), what each transferring
    model chose. A dataset of several perturbations gets a section per perturbation, each from
    that perturbation's runs (and transfer choices) alone."""
    perturbations = perturbations_of(table)
    if len(perturbations) > 1:
        sections = [_section(of_perturbation(table, p), baseline_names,
                             None if transfer is None else
                             of_perturbation(transfer, p, "transfer table"), p)
                    for p in perturbations]
    else:
        sections = [_section(table, baseline_names, transfer, None)]
    models = sorted(table["model"].unique())
    return Verdict(dataset, len(table), len(models), sorted(table["seed"].unique()),
                   [m for m in models if m in baseline_names], sections, list(warnings))


def _section(table: pd.DataFrame, baseline_names: list[str], transfer: pd.DataFrame | None,
             perturbation: str | None) -> Section:
    compared = comparisons(table, baseline_names)
    # The verdict's E-distance is the unbiased one (VERDICT_METRICS); e_distance stays in tables.
    compared = compared[compared["metric"].isin(VERDICT_METRICS)]
    models = sorted(table["model"].unique())
    baselines = [m for m in models if m in baseline_names]
    learned = [_standing(compared, m) for m in models if m not in baselines] if baselines else []
    return Section(perturbation, len(table), len(models),
                   sorted(table["group"].astype(str).unique()), sorted(table["seed"].unique()),
                   baselines,
                   [_with_ranks(_metric_result(metric, rows.set_index("model")), table)
                    for metric, rows in compared.groupby("metric", sort=False)],
                   learned, None if transfer is None else _transfer_choices(transfer))


def _difference(row: pd.Series) -> Difference | None:
    """The difference of a row of ``comparisons``."""
    if row["best_baseline"] is None:
        return None
    return Difference(row["difference"], row["difference_ci_low"], row["difference_ci_high"],
                      int(row["n_pairs"]), bool(row["beats_baseline"]),
                      bool(row["interval_excludes_zero"]))


def _metric_result(metric: str, rows: pd.DataFrame) -> MetricResult:
    """From the rows of ``comparisons`` of ``metric``, indexed by model."""
    winner = rows.index[rows["is_winner"]][0]
    win = rows.loc[winner]
    tied = [m for m in rows.index.drop(winner) if np.isclose(rows.at[m, "mean"], win["mean"])]
    baseline = win["best_baseline"]
    runner_up = None
    rest = rows.drop(index=winner)
    if winner == baseline and not rest.empty:
        runner = best(rest["mean"], win["better"])
        mean, baseline_mean = rest.at[runner, "mean"], rest.at[runner, "baseline_mean"]
        runner_up = RunnerUp(runner, bool(rest.at[runner, "is_baseline"]), mean,
                             None if np.isclose(mean, baseline_mean) else
                             abs(mean - baseline_mean))
    return MetricResult(metric, win["better"], winner, win["mean"], tied, win["groups_won"],
                        win["n_groups"], baseline,
                        np.nan if baseline is None else win["baseline_mean"],
                        {model: _difference(row) for model, row in rows.iterrows()}, runner_up)


def _interval(values: pd.Series) -> Interval | None:
    described = mean_interval(values)
    if described["n"] == 0:
        return None
    return Interval(described["mean"], described["ci_low"], described["ci_high"],
                    int(described["n"]))


def _with_ranks(result: MetricResult, table: pd.DataFrame) -> MetricResult:
    """``result`` with its calibrated scores (winner, strongest baseline, mean ceiling) and its
    rank statistics, from the section's metrics ``table``."""
    metric = result.metric
    calibrated = table.get(calibrated_column(metric), pd.Series(np.nan, index=table.index))
    ceilings = table.get(ceiling_column(metric), pd.Series(np.nan, index=table.index))
    ceiling = pd.to_numeric(ceilings[~table.duplicated(PAIR_COLUMNS)]).mean()
    of = table["model"]
    calibration = Calibration(
        ceiling, _interval(pd.to_numeric(calibrated[of == result.winner])),
        None if result.baseline is None else
        _interval(pd.to_numeric(calibrated[of == result.baseline])))
    test = rank_test(table, metric, result.better)
    ranking = None if test is None else Ranking(
        test.n_blocks, test.friedman_p, test.mean_ranks.to_dict(), test.top_pairs())
    return replace(result, calibration=calibration, ranking=ranking)


def _standing(compared: pd.DataFrame, model: str) -> Standing:
    rows = compared[compared["model"] == model]
    # A metric without a baseline (NaN here: comparisons leaves its row's difference out) is
    # not one the model is ahead on.
    ahead = rows[rows["beats_baseline"].eq(True)]
    return Standing(model, len(rows), ahead["metric"].tolist(),
                    int(ahead["interval_excludes_zero"].sum()))


def _transfer_choices(transfer: pd.DataFrame) -> list[ModelTransfer]:
    """Per transferring model (sorted), its mean α and, per held-out group, its choices
    (``transfer_overview``)."""
    choices = []
    for model, rows in transfer_overview(transfer).groupby("model", sort=True):
        runs = transfer[transfer["model"] == model]
        groups = [GroupChoice(r["group"], r["settings"], r["alpha"], r["inner_score"],
                              r["top_weights"]) for _, r in rows.iterrows()]
        choices.append(ModelTransfer(model, pd.to_numeric(runs["alpha"]).mean(), len(runs),
                                     groups))
    return choices
