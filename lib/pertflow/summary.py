"""Tables and plain-words summaries of the tidy metrics table: means with 95% intervals over seeds
(and over held-out groups), and each model against the best baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from pertflow.errors import DataError
from pertflow.metrics import METRICS

ID_COLUMNS = ["dataset", "model", "group", "seed"]
COUNT_COLUMNS = ["n_pred", "n_truth"]
# The `group` of the rows that pool every held-out group.
ALL_GROUPS = "all groups"
CONFIDENCE = 0.95


def metrics_table(rows: list[dict]) -> pd.DataFrame:
    """The tidy table: one row per run, identifiers, every metric of ``METRICS`` in order, then
    cell counts; sorted by model, group and seed."""
    table = pd.DataFrame(rows)
    columns = [*ID_COLUMNS, *METRICS, *COUNT_COLUMNS]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"run metrics lack {missing}; delete the stale metrics.json files "
                        "(results/*/runs/*/*/*/metrics.json) so that they are scored again.")
    return table[columns].sort_values(["model", "group", "seed"]).reset_index(drop=True)


def mean_interval(values: pd.Series, confidence: float = CONFIDENCE) -> pd.Series:
    """Mean, two-sided t-interval of the mean and the number of values, NaNs dropped. With fewer
    than two values the interval cannot be estimated and is NaN."""
    values = values.dropna()
    n = len(values)
    mean = values.mean() if n else np.nan
    if n < 2:
        low = high = np.nan
    else:
        half = stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
        low, high = mean - half, mean + half
    return pd.Series({"mean": mean, "ci_low": low, "ci_high": high, "n": n})


def summarise(table: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Long table (model, group, metric, mean, ci_low, ci_high, n): per model and held-out group
    over seeds, and per model over every group and seed (group ``ALL_GROUPS``)."""
    long = table.astype({"group": str}).melt(id_vars=["model", "group", "seed"],
                                             value_vars=list(METRICS), var_name="metric")
    pooled = long.assign(group=ALL_GROUPS)
    parts = []
    for part in (long, pooled):
        described = (part.groupby(["model", "group", "metric"], sort=False)["value"]
                     .apply(mean_interval, confidence=confidence).unstack())
        parts.append(described.reset_index())
    summary = pd.concat(parts, ignore_index=True)
    summary["n"] = summary["n"].astype(int)
    summary["metric"] = pd.Categorical(summary["metric"], categories=list(METRICS), ordered=True)
    groups = [*sorted(long["group"].unique()), ALL_GROUPS]
    summary["group"] = pd.Categorical(summary["group"], categories=groups, ordered=True)
    summary = summary.sort_values(["metric", "group", "model"]).reset_index(drop=True)
    return summary.astype({"metric": str, "group": str})


def best(means: pd.Series, direction: str) -> str:
    """Index label of the best value (NaNs ignored); ``direction`` is "higher" or "lower"."""
    return means.idxmax() if direction == "higher" else means.idxmin()


def paired_difference(table: pd.DataFrame, metric: str, model: str, reference: str,
                      confidence: float = CONFIDENCE) -> pd.Series:
    """``model`` minus ``reference`` on ``metric``, paired by held-out group and seed: mean,
    t-interval and number of pairs."""
    wide = table.pivot_table(index=["group", "seed"], columns="model", values=metric,
                             dropna=False)
    return mean_interval(wide[model] - wide[reference], confidence)


def comparisons(table: pd.DataFrame, baseline_names: list[str]) -> pd.DataFrame:
    """Per metric: the winning model over all groups and seeds, the best baseline, and every
    model's paired difference to that baseline and its number of held-out groups won."""
    overall = table.groupby("model")[list(METRICS)].mean()
    per_group = table.groupby(["group", "model"])[list(METRICS)].mean()
    baselines_present = [m for m in baseline_names if m in overall.index]
    rows = []
    for metric, direction in METRICS.items():
        means = overall[metric].dropna()
        if means.empty:
            continue
        group_winners = (per_group[metric].dropna().unstack()
                         .apply(best, axis=1, direction=direction))
        baseline_means = means.reindex(baselines_present).dropna()
        top_baseline = best(baseline_means, direction) if len(baseline_means) else None
        for model, mean in means.items():
            row = {"metric": metric, "better": direction, "model": model, "mean": mean,
                   "is_baseline": model in baselines_present,
                   "is_winner": model == best(means, direction),
                   "groups_won": int((group_winners == model).sum()),
                   "n_groups": len(group_winners), "best_baseline": top_baseline}
            if top_baseline is not None:
                difference = paired_difference(table, metric, model, top_baseline)
                # Signed so that positive means better than the baseline, whatever the direction.
                sign = 1 if direction == "higher" else -1
                row |= {"baseline_mean": means[top_baseline],
                        "difference": difference["mean"], "difference_ci_low":
                        difference["ci_low"], "difference_ci_high": difference["ci_high"],
                        "n_pairs": int(difference["n"]),
                        "beats_baseline": sign * difference["mean"] > 0,
                        "interval_excludes_zero": bool(
                            sign * difference["ci_low"] > 0 and sign * difference["ci_high"] > 0)}
            rows.append(row)
    return pd.DataFrame(rows)


def _number(value: float) -> str:
    # Rounded first so that the float noise of a difference between equal means reads as 0.
    return "n/a" if pd.isna(value) else f"{round(value, 12) + 0.0:.3g}"


def _difference(row: pd.Series) -> str:
    """A comparison row's difference to the best baseline, its interval and number of pairs."""
    interval = ("no interval: one pair" if pd.isna(row["difference_ci_low"]) else
                f"95% CI {_number(row['difference_ci_low'])} to "
                f"{_number(row['difference_ci_high'])}")
    return f"difference {_number(row['difference'])} ({interval}, {row['n_pairs']} pairs)"


def summary_markdown(dataset: str, table: pd.DataFrame, baseline_names: list[str]) -> str:
    """Plain-words Markdown: for every metric, which model wins and by how much against the best
    baseline, with the numbers; then each non-baseline model against the best baseline."""
    compared = comparisons(table, baseline_names)
    models = sorted(table["model"].unique())
    groups = sorted(table["group"].astype(str).unique())
    seeds = sorted(table["seed"].unique())
    baselines_present = [m for m in models if m in baseline_names]
    lines = [
        f"# Summary of dataset {dataset}",
        "",
        f"{len(table)} runs: {len(models)} models × {len(groups)} held-out groups "
        f"({', '.join(groups)}) × {len(seeds)} seeds ({', '.join(map(str, seeds))}). "
        f"Baselines: {', '.join(baselines_present) or 'none'}. Means are over every held-out "
        "group and seed; a difference is a model's value minus the best baseline's, paired by "
        "held-out group and seed, with a 95% t-interval of the mean difference.",
        "",
        "## Winner per metric",
        "",
    ]
    for metric, rows in compared.groupby("metric", sort=False):
        rows = rows.set_index("model")
        winner = rows.index[rows["is_winner"]][0]
        win = rows.loc[winner]
        tied = [m for m in rows.index.drop(winner) if np.isclose(rows.at[m, "mean"], win["mean"])]
        tie = f" (tied with {', '.join(tied)})" if tied else ""
        text = (f"- **{metric}** ({win['better']} is better): **{winner}**{tie} wins with "
                f"{_number(win['mean'])}, best in {win['groups_won']} of {win['n_groups']} "
                "held-out groups")
        baseline = win["best_baseline"]
        if baseline is None:
            text += "; no baseline to compare with."
        elif winner == baseline:
            rest = rows.drop(index=winner)
            if rest.empty:
                text += "; it is the only model."
            else:
                runner = best(rest["mean"], win["better"])
                kind = "baseline" if rest.at[runner, "is_baseline"] else "model"
                text += (f"; it is the best baseline, and the next {kind}, {runner}, reaches "
                         f"{_number(rest.at[runner, 'mean'])}: {_difference(rest.loc[runner])}.")
        else:
            text += (f"; the best baseline, {baseline}, reaches {_number(win['baseline_mean'])}: "
                     f"{_difference(win)}.")
        lines.append(text)
    others = [m for m in models if m not in baselines_present]
    if baselines_present and others:
        lines += ["", "## Models against the best baseline", ""]
        for model in others:
            rows = compared[compared["model"] == model]
            ahead = rows[rows["beats_baseline"].astype(bool)]
            lines.append(f"- **{model}** beats the best baseline on {len(ahead)} of {len(rows)} "
                         f"metrics ({', '.join(ahead['metric']) or 'none'}); on "
                         f"{int(ahead['interval_excludes_zero'].sum())} of them the 95% interval "
                         "of the difference excludes zero.")
    return "\n".join(lines) + "\n"
