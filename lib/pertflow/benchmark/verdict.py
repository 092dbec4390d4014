"""The verdict of one dataset: per metric the winning model and the strongest baseline, every
learned model against that baseline, and what the transferring models chose; per perturbation
where a dataset has several, each judged on its own runs. ``verdict_of`` makes the comparisons
once (a ``Verdict``); ``as_markdown`` (summary.md) and ``as_rst`` (verdict.rst) only format it.

The report's front page, ``workflow/report/workflow.rst``, includes each dataset's verdict.rst as
it is, so its adornments must fit that page: the page title is underlined with "=", a dataset's
section with "-", its subsections with "~". A dataset of several perturbations has a "~"
subsection per perturbation, with "^" below it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pertflow.benchmark.metrics import VERDICT_METRICS, calibrated_column, ceiling_column
from pertflow.benchmark.ranks import ALPHA, format_p, rank_test
from pertflow.benchmark.summary import (
    PAIR_COLUMNS,
    best,
    comparisons,
    format_number,
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


def plural(count: int, noun: str) -> str:
    """``"1 seed"``, ``"2 seeds"``."""
    return f"{count} {noun}{'s' * (count != 1)}"


def split_counts(sections: list[Section], name_groups: bool = True) -> str:
    """The splits of a dataset of several perturbations, in words: ``"2 perturbations (a, b) × 2
    held-out groups (A, B)"`` when every perturbation holds out the same groups (the groups named
    when ``name_groups``), else ``"3 splits (a: A, B; b: A)"``."""
    perturbations = [s.perturbation for s in sections]
    groups = sorted({g for s in sections for g in s.groups})
    n_splits = sum(len(s.groups) for s in sections)
    if n_splits == len(perturbations) * len(groups):
        named = f" ({', '.join(groups)})" if name_groups else ""
        return (f"{len(perturbations)} perturbations ({', '.join(perturbations)}) × "
                f"{len(groups)} held-out groups{named}")
    held_out = "; ".join(f"{s.perturbation}: {', '.join(s.groups)}" for s in sections)
    return f"{n_splits} splits ({held_out})"


# ---------------------------------------------------------------------------------------------
# Markdown: summary.md


def as_markdown(verdict: Verdict) -> str:
    """The verdict in plain words: for every metric, which model wins and by how much against
    the best baseline, with the numbers; then each learned model against the best baseline;
    then, where a transfer table was given, what each transferring model chose (mean α, the most
    weighted training groups per held-out group); then the preprocessing's warnings."""
    seeds = f"{len(verdict.seeds)} seeds ({', '.join(map(str, verdict.seeds))})"
    baselines = ", ".join(verdict.baselines) or "none"
    lines = [f"# Summary of dataset {verdict.dataset}", ""]
    if verdict.several:
        lines.append(
            f"{verdict.n_runs} runs: {verdict.n_models} models × {split_counts(verdict.sections)}"
            f" × {seeds}. Baselines: {baselines}. Each perturbation is judged on its own runs: "
            "means are over its held-out groups and seeds; a difference is a model's value "
            "minus the best baseline's, paired by held-out group and seed, with a 95% t-interval "
            "of the mean difference.")
        for section in verdict.sections:
            runs = (f"{section.n_runs} runs: {plural(section.n_models, 'model')} × "
                    f"{plural(len(section.groups), 'held-out group')} "
                    f"({', '.join(section.groups)}) × {plural(len(section.seeds), 'seed')} "
                    f"({', '.join(map(str, section.seeds))}).")
            lines += ["", f"## Perturbation {section.perturbation}", "", runs, "",
                      *_section_markdown(section, "###")]
    else:
        section = verdict.sections[0]
        lines += [f"{verdict.n_runs} runs: {verdict.n_models} models × {len(section.groups)} "
                  f"held-out groups ({', '.join(section.groups)}) × {seeds}. Baselines: "
                  f"{baselines}. Means are over every held-out group and seed; a difference is a "
                  "model's value minus the best baseline's, paired by held-out group and seed, "
                  "with a 95% t-interval of the mean difference.", "",
                  *_section_markdown(section, "##")]
    return "\n".join(lines) + "\n" + "".join(
        f"\n**Warning (preprocessing):** {w}\n" for w in verdict.warnings)


def fixed(value: float) -> str:
    """A number a user reads, in fixed decimals: ``"0.62"``."""
    return "n/a" if pd.isna(value) else f"{round(float(value), 12) + 0.0:.2f}"


def interval_text(interval: Interval) -> str:
    """``"0.62 [0.55, 0.69]"``, or ``"0.62 (one run)"``."""
    if pd.isna(interval.ci_low):
        return f"{fixed(interval.mean)} (one run)"
    return f"{fixed(interval.mean)} [{fixed(interval.ci_low)}, {fixed(interval.ci_high)}]"


NO_CEILING = ("no calibrated score: no run has a ceiling better than `control` (a split with "
              "fewer than 2 × min_cells perturbed cells gets none; the evaluate logs say why)")


def calibration_text(result: MetricResult, name=str) -> str:
    """The calibrated scores of a metric's winner and strongest baseline in words; ``name``
    formats a model's name."""
    calibration = result.calibration
    if calibration is None or (calibration.winner is None and calibration.baseline is None):
        return NO_CEILING
    parts = [f"{name(result.winner)} " + (interval_text(calibration.winner)
                                           if calibration.winner else "none")]
    if calibration.baseline is not None and result.baseline != result.winner:
        parts.append(f"the strongest baseline, {name(result.baseline)}, "
                     f"{interval_text(calibration.baseline)}")
    ceiling = "" if pd.isna(calibration.ceiling) else \
        f"; the ceiling itself is {fixed(calibration.ceiling)} on average"
    return "calibrated (0 = control, 1 = ceiling): " + ", ".join(parts) + ceiling


def ranking_text(result: MetricResult, name=str) -> str:
    """The rank statistics of a metric in words: Friedman's p and whether the best-ranked model
    is significantly ahead of the next ones (Nemenyi, 5%)."""
    ranking = result.ranking
    if ranking is None:
        return ("ranks: no rank test (it needs three models and two blocks of split and seed "
                "where every model has a value)")
    pairs = "; ".join(
        f"{name(a)} (mean rank {ranking.mean_ranks[a]:.2f}) against {name(b)} "
        f"({ranking.mean_ranks[b]:.2f}): {'significant' if p < ALPHA else 'not significant'} "
        f"(Nemenyi p {format_p(p)})" for a, b, p in ranking.pairs)
    return (f"ranks over {ranking.n_blocks} blocks (split and seed): Friedman p "
            f"{format_p(ranking.friedman_p)}; {pairs}")


def _section_markdown(section: Section, level: str) -> list[str]:
    """A section's lines under headings of ``level`` ("##", "###")."""
    lines = [f"{level} Winner per metric", ""]
    for result in section.metrics:
        lines += [_winner_markdown(result), f"  - {calibration_text(result)}",
                  f"  - {ranking_text(result)}"]
    if section.learned:
        lines += ["", f"{level} Models against the best baseline", ""]
        lines += [f"- **{s.model}** beats the best baseline on {len(s.ahead)} of {s.n_metrics} "
                  f"metrics ({', '.join(s.ahead) or 'none'}); on {s.n_excluding_zero} of them "
                  "the 95% interval of the difference excludes zero." for s in section.learned]
    if section.transfer is not None:
        lines += ["", f"{level} Transfer between groups", "",
                  *_transfer_markdown(section.transfer)]
    return lines


def _difference_markdown(difference: Difference) -> str:
    """``"difference 0.875 (95% CI 0.477 to 1.27, 4 pairs)"``."""
    interval = ("no interval: one pair" if pd.isna(difference.ci_low) else
                f"95% CI {format_number(difference.ci_low)} to "
                f"{format_number(difference.ci_high)}")
    return (f"difference {format_number(difference.mean)} ({interval}, {difference.n_pairs} "
            "pairs)")


def _winner_markdown(result: MetricResult) -> str:
    tie = f" (tied with {', '.join(result.tied)})" if result.tied else ""
    text = (f"- **{result.metric}** ({result.better} is better): **{result.winner}**{tie} wins "
            f"with {format_number(result.mean)}, best in {result.groups_won} of "
            f"{result.n_groups} held-out groups")
    if result.baseline is None:
        return text + "; no baseline to compare with."
    if result.winner != result.baseline:
        return (text + f"; the best baseline, {result.baseline}, reaches "
                f"{format_number(result.baseline_mean)}: "
                f"{_difference_markdown(result.differences[result.winner])}.")
    runner = result.runner_up
    if runner is None:
        return text + "; it is the only model."
    kind = "baseline" if runner.is_baseline else "model"
    behind = "as good" if runner.behind is None else f"{format_number(runner.behind)} worse"
    # The header's direction: the other model's value minus the best baseline's.
    return (text + f"; it is the best baseline, and the next {kind}, {runner.model}, reaches "
            f"{format_number(runner.mean)} ({behind}): "
            f"{_difference_markdown(result.differences[runner.model])}, {runner.model} minus "
            f"{result.winner}.")


def _transfer_markdown(transfer: list[ModelTransfer]) -> list[str]:
    if not transfer:
        return ["No model transfers the responses of the training groups."]
    lines = ["Models that predict a held-out group from the responses of the training groups that "
             "resemble it: the response scale α they chose on the training groups (mean over "
             "held-out groups and seeds) and, per held-out group, the settings chosen and the "
             "most weighted training groups (mean weight over seeds).", ""]
    for model in transfer:
        lines.append(f"- **{model.model}**: mean chosen α {format_number(model.alpha)} over "
                     f"{model.n_runs} runs ({len(model.groups)} held-out groups); most weighted "
                     "training groups:")
        lines += [f"  - held out {g.group} ({g.settings}, α {format_number(g.alpha)}): "
                  f"{g.top_weights or 'no weights recorded'}" for g in model.groups]
    return lines


# ---------------------------------------------------------------------------------------------
# reStructuredText: verdict.rst, the report's front page

ARROWS = {"higher": "↑", "lower": "↓"}


def escape(text: object) -> str:
    """``text`` with the characters that start or end reStructuredText inline markup
    backslash-escaped, so that a model or group name such as ``a_`` or ``*x*`` reads as written
    (an underscore inside a word, as in ``mean_shift``, needs none)."""
    return re.sub(r"([\\`*|]|_(?!\w)|(?<!\w)_)", r"\\\1", str(text))


def heading(title: str, char: str) -> list[str]:
    # An underline at least as wide as the title in display columns (wide characters count two).
    width = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in title)
    return [title, char * width, ""]


def list_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: auto", ""]
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines.append(("   * - " if i == 0 else "     - ") + (cell or "–"))
    return [*lines, ""]


def signed(value: float) -> str:
    text = format_number(value)
    return f"+{text}" if not pd.isna(value) and round(value, 12) > 0 else text


def difference_cell(difference: Difference | None) -> str:
    """``"+0.062 [0.021, 0.1]"`` (paired difference to the strongest baseline, 95% interval),
    bold when the model is better and the interval excludes zero."""
    if difference is None or pd.isna(difference.mean):
        return "–"
    interval = ("one pair" if pd.isna(difference.ci_low) else
                f"{format_number(difference.ci_low)}, {format_number(difference.ci_high)}")
    text = f"{signed(difference.mean)} [{interval}]"
    return f"**{text}**" if difference.better and difference.excludes_zero else text


def as_rst(verdict: Verdict) -> str:
    """The dataset's section of the report's front page: per metric the winning model and its
    mean, the strongest baseline and the winner's paired difference to it; every learned model's
    paired difference to the strongest baseline on every metric, with its 95% interval; where a
    transfer table was given, the settings and weights each transferring model chose per
    held-out group; then the preprocessing's warnings."""
    seeds = plural(len(verdict.seeds), "seed")
    baselines = escape(", ".join(verdict.baselines) or "none")
    lines = heading(f"Dataset {escape(verdict.dataset)}", "-")
    if verdict.several:
        splits = escape(split_counts(verdict.sections, name_groups=False))
        lines += [f"{verdict.n_runs} runs: {verdict.n_models} models × {splits} × {seeds}. "
                  f"Baselines: {baselines}. Each perturbation is judged on its own runs: means "
                  "are over its held-out groups and seeds (↑ higher is better, ↓ lower is "
                  "better); a difference is a model's value minus the strongest baseline's on "
                  "that metric, paired by held-out group and seed, with its 95% t-interval in "
                  "brackets.", ""]
        for section in verdict.sections:
            runs = (f"{section.n_runs} runs: {plural(section.n_models, 'model')} × "
                    f"{plural(len(section.groups), 'held-out group')} × "
                    f"{plural(len(section.seeds), 'seed')}.")
            lines += [*heading(f"Perturbation {escape(section.perturbation)}", "~"), runs, "",
                      *_section_rst(section, "^")]
    else:
        section = verdict.sections[0]
        lines += [f"{verdict.n_runs} runs: {verdict.n_models} models × {len(section.groups)} "
                  f"held-out groups × {seeds}. Baselines: {baselines}. Means are over every "
                  "held-out group and seed (↑ higher is better, ↓ lower is better); a difference "
                  "is a model's value minus the strongest baseline's on that metric, paired by "
                  "held-out group and seed, with its 95% t-interval in brackets.", "",
                  *_section_rst(section, "~")]
    return "\n".join(lines) + "\n" + "".join(
        f"\n.. warning:: Preprocessing: {escape(w)}\n" for w in verdict.warnings)


def _section_rst(section: Section, char: str) -> list[str]:
    """A section's subsections, underlined with ``char``."""
    lines = heading("Winner per metric", char)
    rows = []
    for result in section.metrics:
        if result.baseline is None:
            strongest, margin = "no baseline", "–"
        else:
            strongest = f"{escape(result.baseline)} {format_number(result.baseline_mean)}"
            margin = "winner is the strongest baseline" if result.winner == result.baseline \
                else difference_cell(result.differences[result.winner])
        rows.append([f"{escape(result.metric)} {ARROWS[result.better]}",
                     f"**{escape(result.winner)}** {format_number(result.mean)}",
                     f"{result.groups_won} of {result.n_groups}", strongest, margin])
    lines += list_table(["metric", "winner: mean", "groups won", "strongest baseline: mean",
                         "winner − strongest baseline"], rows)

    lines += heading("Calibrated scores and ranks", char)
    lines += ["Each metric calibrated per run between the `control` prediction (0) and the "
              "ceiling (1), the metric between two random halves of the real perturbed cells, "
              "all scored against the same half (mean and 95% t-interval over the runs with a "
              "ceiling); the models ranked per split and seed, Friedman's test, and the "
              "best-ranked model against the next ones (Nemenyi's test, significant below "
              f"{ALPHA:.2f}).", ""]
    rows = []
    for result in section.metrics:
        calibration = result.calibration
        has = calibration is not None and calibration.winner is not None
        winner = f"{escape(result.winner)} {interval_text(calibration.winner)}" if has else \
            "no ceiling"
        baseline = "–"
        if has and result.baseline is not None and calibration.baseline is not None:
            baseline = f"{escape(result.baseline)} {interval_text(calibration.baseline)}"
        ceiling = "–" if calibration is None or pd.isna(calibration.ceiling) else \
            fixed(calibration.ceiling)
        rows.append([f"{escape(result.metric)} {ARROWS[result.better]}", ceiling, winner,
                     baseline, escape(ranking_text(result))])
    lines += list_table(["metric", "ceiling", "winner: calibrated", "strongest baseline: "
                         "calibrated", "ranks"], rows)

    lines += heading("Learned models against the strongest baseline", char)
    if not section.baselines:
        lines += ["No baseline among this dataset's models: nothing to compare with.", ""]
    elif not section.learned:
        lines += ["Every model of this dataset is a baseline.", ""]
    else:
        lines += [f"- **{escape(s.model)}** is better than the strongest baseline on "
                  f"{len(s.ahead)} of {s.n_metrics} metrics, on {s.n_excluding_zero} of them "
                  "with a 95% interval that excludes zero." for s in section.learned]
        lines += ["", "Differences to the strongest baseline of each metric (**bold**: better, "
                  "interval excluding zero):", ""]
        learned = [s.model for s in section.learned]
        rows = [[f"{escape(result.metric)} {ARROWS[result.better]}",
                 "–" if result.baseline is None else escape(result.baseline),
                 *[difference_cell(result.differences.get(model)) for model in learned]]
                for result in section.metrics]
        lines += list_table(["metric", "strongest baseline", *map(escape, learned)], rows)

    if section.transfer is not None:
        lines += heading("Transfer between groups", char)
        if not section.transfer:
            lines += ["No model of this dataset transfers the responses of the training "
                      "groups.", ""]
        else:
            lines += ["Per held-out group, the settings each transferring model chose on its "
                      "training groups (each predicted from the others in turn), the scale α of "
                      "the transferred response and the inner score of that choice (means over "
                      "seeds), and the most weighted training groups (mean weight over seeds).",
                      ""]
            rows = [[escape(model.model), escape(g.group), escape(g.settings),
                     format_number(g.alpha), format_number(g.inner_score),
                     escape(g.top_weights) or "no weights recorded"]
                    for model in section.transfer for g in model.groups]
            lines += list_table(["model", "held out", "settings", "α", "inner score",
                                 "most weighted training groups"], rows)
    return lines
