"""The verdict of one dataset as reStructuredText, for the front page of the Snakemake report.

The report's front page is ``workflow/report/workflow.rst``, which includes each dataset's
``verdict.rst`` (written by ``verdict_rst``) as it is. Its adornments must fit that page: the page
title is underlined with "=", a dataset's section with "-", its subsections with "~". A dataset of
several perturbations has a "~" subsection per perturbation, with "^" below it.
"""

from __future__ import annotations

import re
import unicodedata

import pandas as pd

from pertflow.benchmark.metrics import METRICS
from pertflow.benchmark.summary import (
    comparisons,
    format_number,
    metrics_ahead,
    of_perturbation,
    perturbations_of,
    split_counts,
    transfer_overview,
)

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


def difference_cell(row: pd.Series) -> str:
    """``"+0.062 [0.021, 0.1]"`` (paired difference to the strongest baseline, 95% interval),
    bold when the model is better and the interval excludes zero."""
    if pd.isna(row.get("difference")):
        return "–"
    low, high = row["difference_ci_low"], row["difference_ci_high"]
    interval = "one pair" if pd.isna(low) else f"{format_number(low)}, {format_number(high)}"
    text = f"{signed(row['difference'])} [{interval}]"
    return f"**{text}**" if row["beats_baseline"] and row["interval_excludes_zero"] else text


def verdict_rst(dataset: str, table: pd.DataFrame, baseline_names: list[str],
                transfer: pd.DataFrame | None = None) -> str:
    """One dataset's section of the report's front page: per metric the winning model and its
    mean, the strongest baseline and the winner's paired difference to it; every learned
    (non-baseline) model's paired difference to the strongest baseline on every metric, with its
    95% interval; and, from the ``transfer`` table, the settings and weights each transferring
    model chose per held-out group. A dataset of several perturbations gets all of this per
    perturbation, each from that perturbation's runs alone."""
    perturbations = perturbations_of(table)
    if len(perturbations) > 1:
        return _several_rst(dataset, table, baseline_names, transfer, perturbations)
    models = sorted(table["model"].unique())
    seeds = sorted(table["seed"].unique())
    baselines = [m for m in models if m in baseline_names]
    groups = sorted(table["group"].astype(str).unique())
    lines = [
        *heading(f"Dataset {escape(dataset)}", "-"),
        f"{len(table)} runs: {len(models)} models × {len(groups)} held-out groups × {len(seeds)} "
        f"seed{'s' * (len(seeds) != 1)}. Baselines: {escape(', '.join(baselines) or 'none')}. "
        "Means are over every held-out group and seed (↑ higher is better, ↓ lower is better); "
        "a difference is a model's value minus the strongest baseline's on that metric, paired by "
        "held-out group and seed, with its 95% t-interval in brackets.",
        "",
        *_verdict_sections(table, baseline_names, transfer, "~"),
    ]
    return "\n".join(lines) + "\n"


def plural(count: int, noun: str) -> str:
    """``"1 seed"``, ``"2 seeds"``."""
    return f"{count} {noun}{'s' * (count != 1)}"


def _several_rst(dataset: str, table: pd.DataFrame, baseline_names: list[str],
                 transfer: pd.DataFrame | None, perturbations: list[str]) -> str:
    """``verdict_rst`` of a dataset of several perturbations: a "~" subsection per perturbation,
    its own sections underlined with "^"."""
    models = sorted(table["model"].unique())
    baselines = [m for m in models if m in baseline_names]
    splits = escape(split_counts(table, name_groups=False))
    opening = (f"{len(table)} runs: {len(models)} models × {splits} × "
               f"{plural(table['seed'].nunique(), 'seed')}. Baselines: "
               f"{escape(', '.join(baselines) or 'none')}. Each perturbation is judged on its own "
               "runs: means are over its held-out groups and seeds (↑ higher is better, ↓ lower "
               "is better); a difference is a model's value minus the strongest baseline's on "
               "that metric, paired by held-out group and seed, with its 95% t-interval in "
               "brackets.")
    lines = [*heading(f"Dataset {escape(dataset)}", "-"), opening, ""]
    for perturbation in perturbations:
        rows = of_perturbation(table, perturbation)
        runs = (f"{len(rows)} runs: {plural(rows['model'].nunique(), 'model')} × "
                f"{plural(rows['group'].nunique(), 'held-out group')} × "
                f"{plural(rows['seed'].nunique(), 'seed')}.")
        chosen = None if transfer is None else \
            of_perturbation(transfer, perturbation, "transfer table")
        lines += [*heading(f"Perturbation {escape(perturbation)}", "~"), runs, "",
                  *_verdict_sections(rows, baseline_names, chosen, "^")]
    return "\n".join(lines) + "\n"


def _verdict_sections(table: pd.DataFrame, baseline_names: list[str],
                      transfer: pd.DataFrame | None, char: str) -> list[str]:
    """The winners, the learned models against the strongest baseline and the transfer choices,
    on the runs of ``table``, as sections underlined with ``char``."""
    compared = comparisons(table, baseline_names)
    models = sorted(table["model"].unique())
    baselines = [m for m in models if m in baseline_names]
    learned = [m for m in models if m not in baselines]
    lines = heading("Winner per metric", char)
    rows = []
    for metric, metric_rows in compared.groupby("metric", sort=False):
        metric_rows = metric_rows.set_index("model")
        winner = metric_rows.index[metric_rows["is_winner"]][0]
        win = metric_rows.loc[winner]
        baseline = win["best_baseline"]
        if baseline is None:
            strongest, margin = "no baseline", "–"
        else:
            strongest = f"{escape(baseline)} {format_number(win['baseline_mean'])}"
            margin = "winner is the strongest baseline" if winner == baseline else \
                difference_cell(win)
        rows.append([f"{escape(metric)} {ARROWS[win['better']]}",
                     f"**{escape(winner)}** {format_number(win['mean'])}",
                     f"{win['groups_won']} of {win['n_groups']}", strongest, margin])
    lines += list_table(["metric", "winner: mean", "groups won", "strongest baseline: mean",
                         "winner − strongest baseline"], rows)

    lines += heading("Learned models against the strongest baseline", char)
    if not baselines:
        lines += ["No baseline among this dataset's models: nothing to compare with.", ""]
    elif not learned:
        lines += ["Every model of this dataset is a baseline.", ""]
    else:
        for model in learned:
            model_rows, ahead = metrics_ahead(compared, model)
            lines.append(f"- **{escape(model)}** is better than the strongest baseline on "
                         f"{len(ahead)} of {len(model_rows)} metrics, on "
                         f"{int(ahead['interval_excludes_zero'].sum())} of them with a 95% "
                         "interval that excludes zero.")
        lines += ["", "Differences to the strongest baseline of each metric (**bold**: better, "
                  "interval excluding zero):", ""]
        rows = []
        for metric, metric_rows in compared.groupby("metric", sort=False):
            metric_rows = metric_rows.set_index("model")
            baseline = metric_rows["best_baseline"].iloc[0]
            rows.append([f"{escape(metric)} {ARROWS[METRICS[metric]]}",
                         "–" if baseline is None else escape(baseline),
                         *[difference_cell(metric_rows.loc[model])
                           if model in metric_rows.index else "–" for model in learned]])
        lines += list_table(["metric", "strongest baseline", *map(escape, learned)], rows)

    if transfer is not None:
        lines += heading("Transfer between groups", char)
        overview = transfer_overview(transfer)
        if overview.empty:
            lines += ["No model of this dataset transfers the responses of the training "
                      "groups.", ""]
        else:
            lines += ["Per held-out group, the settings each transferring model chose on its "
                      "training groups (each predicted from the others in turn), the scale α of "
                      "the transferred response and the inner score of that choice (means over "
                      "seeds), and the most weighted training groups (mean weight over seeds).",
                      ""]
            rows = [[escape(r["model"]), escape(r["group"]), escape(r["settings"]),
                     format_number(r["alpha"]), format_number(r["inner_score"]),
                     escape(r["top_weights"]) or "no weights recorded"]
                    for _, r in overview.iterrows()]
            lines += list_table(["model", "held out", "settings", "α", "inner score",
                                 "most weighted training groups"], rows)
    return lines
