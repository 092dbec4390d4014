"""Tables of the tidy metrics table: means with 95% intervals over seeds (and over held-out
groups), and each model against the best baseline (``comparisons``, which
``pertflow.benchmark.verdict`` puts in words); and the table of the transfer choices (settings and
per-group weights) that models transferring the training groups' responses recorded in their
predictions.

A run holds out one split, a (perturbation, group) pair. Runs are paired by split and seed, never
across perturbations."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pertflow.errors import DataError
from pertflow.benchmark.metrics import (
    CALIBRATED_COLUMNS,
    CEILING_COLUMNS,
    METRICS,
    calibrate,
    calibrated_column,
    ceiling_column,
    discrimination,
)

ID_COLUMNS = ["dataset", "model", "perturbation", "group", "seed"]
# What a run holds out (a split); runs of different models pair on these and the seed.
SPLIT_COLUMNS = ["perturbation", "group"]
PAIR_COLUMNS = [*SPLIT_COLUMNS, "seed"]
COUNT_COLUMNS = ["n_pred", "n_truth"]
# The `group` of the rows that pool every held-out group.
ALL_GROUPS = "all groups"
CONFIDENCE = 0.95


def add_discrimination(rows: list[dict]) -> list[dict]:
    """The rows with the discrimination across held-out groups (``metrics.discrimination``) from
    their ``centroid_changes`` (which ``scripts/evaluate.py`` writes, dropped here): per model,
    perturbation and seed, each held-out group's predicted change against every held-out group's
    real one. Its ceiling and calibrated score compare, against the first draw's half B of every
    group that has halves, the prediction (model), no change (`control`, 0) and half A (ceiling).
    Rows without centroid changes (written by hand, or older) are returned as they are."""
    rows = [dict(row) for row in rows]
    together: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row.get("centroid_changes") is not None:
            key = (row["model"], str(row["perturbation"]), row["seed"])
            together.setdefault(key, {})[str(row["group"])] = {
                k: None if v is None else np.asarray(v, float)
                for k, v in row["centroid_changes"].items()}
    for row in rows:
        changes = row.pop("centroid_changes", None)
        if changes is None:
            continue
        groups = together[(row["model"], str(row["perturbation"]), row["seed"])]
        group, own = str(row["group"]), groups[str(row["group"])]
        row["discrimination"] = discrimination(
            own["prediction"], {g: c["truth"] for g, c in groups.items()}, group)
        halves = {g: c["half_b"] for g, c in groups.items() if c["half_b"] is not None}
        ceiling, calibrated = np.nan, np.nan
        if own["half_a"] is not None and len(halves) > 1:
            ceiling = discrimination(own["half_a"], halves, group)
            calibrated = calibrate(discrimination(own["prediction"], halves, group),
                                   discrimination(np.zeros_like(own["half_a"]), halves, group),
                                   ceiling, METRICS["discrimination"])
        row[ceiling_column("discrimination")] = ceiling
        row[calibrated_column("discrimination")] = calibrated
    return rows


def metrics_table(rows: list[dict]) -> pd.DataFrame:
    """The tidy table: one row per run, identifiers, every metric of ``METRICS`` in order, cell
    counts, then each metric's ceiling (``{metric}_ceiling``) and calibrated score
    (``{metric}_calibrated``; NaN where a run has none); sorted by model, perturbation, group
    and seed. The discrimination across held-out groups is computed here from the runs'
    centroid changes (``add_discrimination``)."""
    table = pd.DataFrame(add_discrimination(rows))
    columns = [*ID_COLUMNS, *METRICS, *COUNT_COLUMNS]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"run metrics lack {missing}; delete the stale metrics.json files "
                        "(results/*/runs/*/*/*/metrics.json) so that they are scored again.")
    table = table.reindex(columns=[*columns, *CEILING_COLUMNS, *CALIBRATED_COLUMNS])
    return table.sort_values(["model", *PAIR_COLUMNS]).reset_index(drop=True)


def perturbations_of(table: pd.DataFrame) -> list[str]:
    """The perturbations of a metrics (or transfer) table, sorted; none without a
    ``perturbation`` column (a table of one perturbation written before the column existed)."""
    if "perturbation" not in table.columns:
        return []
    return sorted(table["perturbation"].astype(str).unique())


def of_perturbation(table: pd.DataFrame, perturbation: str, what: str = "table") -> pd.DataFrame:
    """The rows of ``table`` (metrics or transfer choices) of one perturbation."""
    if "perturbation" not in table.columns:
        raise DataError(f"the {what} has no perturbation column; delete the stale file "
                        "(results/*/metrics.csv or transfer.csv) so that it is made again.")
    return table[table["perturbation"].astype(str) == perturbation]


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


# The columns summarise adds to each metric's mean and interval: the mean ceiling (the metric
# between two halves of the real cells) and the calibrated score (0: `control`, 1: the ceiling)
# with its interval, both over the runs that have a ceiling.
CALIBRATION_SUMMARY = ["ceiling", "calibrated", "calibrated_ci_low", "calibrated_ci_high",
                       "calibrated_n"]


def summarise(table: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Long table (model, perturbation, group, metric, mean, ci_low, ci_high, n, then
    ``CALIBRATION_SUMMARY``): per model, perturbation and held-out group over seeds, and per
    model and perturbation over every group of that perturbation and seed (group
    ``ALL_GROUPS``; perturbations are never pooled). Sorted by metric (as ``METRICS``),
    perturbation, group (``ALL_GROUPS`` last) and model. A table without ceiling or calibrated
    columns (written before them) gets NaN there."""
    keys = ["model", *SPLIT_COLUMNS]
    table = table.astype({"perturbation": str, "group": str})

    def melted(columns: list[str], name: str) -> pd.Series:
        values = table.reindex(columns=columns).set_axis(list(METRICS), axis=1)
        return pd.concat([table[[*keys, "seed"]], values], axis=1).melt(
            id_vars=[*keys, "seed"], value_vars=list(METRICS), var_name="metric")["value"] \
            .rename(name)

    long = table.melt(id_vars=[*keys, "seed"], value_vars=list(METRICS), var_name="metric")
    long["ceiling"] = melted(CEILING_COLUMNS, "ceiling").to_numpy(float)
    long["calibrated"] = melted(CALIBRATED_COLUMNS, "calibrated").to_numpy(float)
    pooled = long.assign(group=ALL_GROUPS)
    parts = []
    for part in (long, pooled):
        grouped = part.groupby([*keys, "metric"], sort=False)
        described = grouped["value"].apply(mean_interval, confidence=confidence).unstack()
        calibrated = (grouped["calibrated"].apply(mean_interval, confidence=confidence)
                      .unstack().rename(columns=lambda c: f"calibrated_{c}")
                      .rename(columns={"calibrated_mean": "calibrated"}))
        described = described.join(grouped["ceiling"].mean()).join(calibrated)
        parts.append(described.reset_index())
    summary = pd.concat(parts, ignore_index=True)
    summary = summary[[*keys, "metric", "mean", "ci_low", "ci_high", "n", *CALIBRATION_SUMMARY]]
    summary[["n", "calibrated_n"]] = summary[["n", "calibrated_n"]].astype(int)
    summary["metric"] = pd.Categorical(summary["metric"], categories=list(METRICS), ordered=True)
    groups = [*sorted(long["group"].unique()), ALL_GROUPS]
    summary["group"] = pd.Categorical(summary["group"], categories=groups, ordered=True)
    summary = summary.sort_values(["metric", *SPLIT_COLUMNS, "model"]).reset_index(drop=True)
    return summary.astype({"metric": str, "group": str})


def best(means: pd.Series, direction: str) -> str:
    """Index label of the best value (NaNs ignored); ``direction`` is "higher" or "lower"."""
    return means.idxmax() if direction == "higher" else means.idxmin()


def group_wins(values: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Per row (a split: held-out perturbation and group) of ``values`` (splits × models): True
    for every model whose value equals the row's best (``np.isclose``), so that tied models each
    win the split; NaN never wins."""
    top = values.max(axis=1) if direction == "higher" else values.min(axis=1)
    wins = np.isclose(values.to_numpy(float), top.to_numpy(float)[:, None])
    return pd.DataFrame(wins, index=values.index, columns=values.columns) & values.notna()


def paired_difference(table: pd.DataFrame, metric: str, model: str, reference: str,
                      confidence: float = CONFIDENCE) -> pd.Series:
    """``model`` minus ``reference`` on ``metric``, paired by split (perturbation and held-out
    group) and seed: mean, t-interval and number of pairs."""
    wide = table.pivot_table(index=PAIR_COLUMNS, columns="model", values=metric, dropna=False)
    return mean_interval(wide[model] - wide[reference], confidence)


def comparisons(table: pd.DataFrame, baseline_names: list[str]) -> pd.DataFrame:
    """Per metric: the winning model over all splits and seeds, the best baseline, and every
    model's paired difference to that baseline (paired by split and seed) and its number of
    splits won (``groups_won`` of ``n_groups``; a split won in a tie counts for every tied
    model). On the rows of one perturbation, as the summaries call it, the splits are its
    held-out groups."""
    overall = table.groupby("model")[list(METRICS)].mean()
    per_group = table.groupby([*SPLIT_COLUMNS, "model"])[list(METRICS)].mean()
    baselines_present = [m for m in baseline_names if m in overall.index]
    rows = []
    for metric, direction in METRICS.items():
        means = overall[metric].dropna()
        if means.empty:
            continue
        wins = group_wins(per_group[metric].dropna().unstack(), direction)
        baseline_means = means.reindex(baselines_present).dropna()
        top_baseline = best(baseline_means, direction) if len(baseline_means) else None
        winner = best(means, direction)
        if winner in baseline_means.index:  # a baseline tied for the lead is the best baseline
            top_baseline = winner
        for model, mean in means.items():
            row = {"metric": metric, "better": direction, "model": model, "mean": mean,
                   "is_baseline": model in baselines_present,
                   "is_winner": model == winner,
                   "groups_won": int(wins[model].sum()) if model in wins else 0,
                   "n_groups": len(wins), "best_baseline": top_baseline}
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


def format_number(value: float) -> str:
    # Rounded first so that the float noise of a difference between equal means reads as 0.
    return "n/a" if pd.isna(value) else f"{round(value, 12) + 0.0:.3g}"


# ---------------------------------------------------------------------------------------------
# Transfer choices: what the models that transfer the training groups' responses chose

# One row per run of a transferring model: its model and split (perturbation, held-out group) and
# seed, then the choice. Whatever else a choice records (such as the score of the choice on the
# training groups, `inner_score`) goes between `alpha` and `weights`; numeric per-training-group
# weights follow, named WEIGHT_PREFIX + group (empty where the group did not train that run).
CHOICE_COLUMNS = ["method", "space", "tau", "k", "alpha"]
TRANSFER_COLUMNS = ["model", *PAIR_COLUMNS, *CHOICE_COLUMNS, "weights"]
WEIGHT_PREFIX = "weight_"
# The key of the score the chosen settings reached on the training groups (older predictions
# recorded an R²).
INNER_SCORE_KEYS = ("inner_score", "inner_r2")


def read_transfer(path: str | Path) -> dict | None:
    """The transfer choice a prediction records (``uns["pertflow"]["transfer"]``, a JSON string),
    read from the h5ad's ``uns`` alone, not its matrix; None for a model that does not transfer."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        node = f.get("uns/pertflow/transfer")
        if node is None:
            return None
        value = read_elem(node)
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        return dict(value)
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: uns['pertflow']['transfer'] is not JSON ({error}); delete the "
                        "prediction so that its model runs again.") from error


def format_weights(weights: dict[str, float], top: int | None = None) -> str:
    """``"CD8T 0.60, NK 0.35, B 0.05"``: groups by decreasing weight (ties by name), the first
    ``top`` of them (all by default)."""
    ranked = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:top]
    return ", ".join(f"{group} {weight:.2f}" for group, weight in ranked)


def transfer_table(runs: Iterable[dict]) -> pd.DataFrame:
    """The transfer choices of every run: ``runs`` are dicts with model, perturbation and group
    (the split held out), seed and transfer (the decoded choice of ``read_transfer``; None for a
    model that does not transfer, which gets no row). Columns ``TRANSFER_COLUMNS`` (``tau`` empty
    for a plain average, ``k`` for per-cell methods only; ``weights`` readable, by decreasing
    weight), with any other value the choices record (e.g. ``inner_score``) before ``weights``,
    then the weights again, one numeric column per training group; sorted by model,
    perturbation, group and seed. No run transfers: the header only."""
    known = set(TRANSFER_COLUMNS)
    rows, extra = [], {}
    for run in runs:
        choice = run.get("transfer")
        if not choice:
            continue
        weights = {str(g): float(w) for g, w in (choice.get("weights") or {}).items()}
        row = {"model": run["model"], "perturbation": str(run["perturbation"]),
               "group": str(run["group"]), "seed": int(run["seed"])}
        row |= {key: value for key, value in choice.items()
                if key not in known and not isinstance(value, dict | list)}
        extra |= dict.fromkeys(key for key in row if key not in known)
        row |= {key: choice.get(key) for key in CHOICE_COLUMNS}
        row["weights"] = format_weights(weights)
        row |= {WEIGHT_PREFIX + group: weight for group, weight in weights.items()}
        rows.append(row)
    weight_columns = sorted({c for row in rows for c in row if c.startswith(WEIGHT_PREFIX)})
    columns = [*TRANSFER_COLUMNS[:-1], *sorted(extra), "weights", *weight_columns]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["model", *PAIR_COLUMNS]).reset_index(drop=True)


def transfer_settings(run: pd.Series) -> str:
    """A run's chosen settings in words: ``"similarity in genes, τ 0.1"``, ``"per_cell in pca,
    k 20"``, ``"similarity in genes, τ none (plain average)"``, ``"average"``."""
    text = str(run["method"])
    if pd.notna(run.get("space")):
        text += f" in {run['space']}"
    if pd.notna(run.get("k")):
        text += f", k {float(run['k']):g}"
    elif run["method"] == "similarity":
        text += ", τ none (plain average)" if pd.isna(run.get("tau")) else \
            f", τ {format_number(float(run['tau']))}"
    return text


def transfer_overview(transfer: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """Per transferring model and split (perturbation and held-out group), over its seeds: the
    settings chosen (distinct ones joined by "; "), mean α and mean inner score
    (``INNER_SCORE_KEYS``; NaN where none is recorded), the number of seeds, and the ``top``
    training groups by mean weight (``top_weights``, as ``format_weights``; empty when none
    recorded). A table without a perturbation column (an older one) is taken per held-out
    group."""
    keys = ["model", *(c for c in SPLIT_COLUMNS if c in transfer.columns)]
    columns = [*keys, "n_seeds", "settings", "alpha", "inner_score", "top_weights"]
    weight_columns = [c for c in transfer.columns if c.startswith(WEIGHT_PREFIX)]
    inner = next((key for key in INNER_SCORE_KEYS if key in transfer.columns), None)
    rows = []
    for values, runs in transfer.groupby(keys, sort=True):
        trained = runs[weight_columns].notna().any()
        weights = runs[weight_columns].loc[:, trained].fillna(0).mean()
        split = {key: str(value) for key, value in zip(keys[1:], values[1:], strict=True)}
        rows.append({"model": values[0], **split, "n_seeds": runs["seed"].nunique(),
                     "settings": "; ".join(dict.fromkeys(transfer_settings(r)
                                                         for _, r in runs.iterrows())),
                     "alpha": pd.to_numeric(runs["alpha"]).mean(),
                     "inner_score": np.nan if inner is None else
                     pd.to_numeric(runs[inner]).mean(),
                     "top_weights": format_weights(
                         {c.removeprefix(WEIGHT_PREFIX): w for c, w in weights.items()}, top)})
    return pd.DataFrame(rows, columns=columns)
