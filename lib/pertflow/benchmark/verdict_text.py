"""The verdict (``pertflow.benchmark.verdict.Verdict``) as text: ``as_markdown`` (summary.md) and
``as_rst`` (verdict.rst). Both only format; every comparison is made in ``verdict_of``.

The report's front page, ``workflow/report/workflow.rst``, includes each dataset's verdict.rst as
it is, so its adornments must fit that page: the page title is underlined with "=", a dataset's
section with "-", its subsections with "~". A dataset of several perturbations has a "~"
subsection per perturbation, with "^" below it."""

from __future__ import annotations

import re
import unicodedata

import pandas as pd

from pertflow.benchmark.ranks import ALPHA, format_p
from pertflow.benchmark.summary import format_number
from pertflow.benchmark.verdict import (
    Difference,
    Interval,
    MetricResult,
    ModelTransfer,
    Section,
    Verdict,
)


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
