import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import ROOT
from pertflow import summary
from pertflow.config import baseline_models
from pertflow.errors import DataError
from pertflow.metrics import METRICS


def make_table(values: dict[str, list[float]], groups=("A", "B"), seeds=(0, 1)) -> pd.DataFrame:
    """One row per model × group × seed; ``values[model]`` fills every metric, in row order, with
    e_distance and mmd taken as the negated value so that "better" agrees across metrics."""
    rows = []
    for model, model_values in values.items():
        runs = [(g, s) for g in groups for s in seeds]
        for (group, seed), value in zip(runs, model_values, strict=True):
            row = {"dataset": "d", "model": model, "group": group, "seed": seed,
                   "n_pred": 10, "n_truth": 12}
            row |= {m: value if d == "higher" else -value for m, d in METRICS.items()}
            rows.append(row)
    return summary.metrics_table(rows)


def test_metrics_table_orders_columns_and_rows_and_names_what_is_missing():
    table = make_table({"b": [1, 2, 3, 4], "a": [5, 6, 7, 8]})
    assert list(table.columns) == ["dataset", "model", "group", "seed", *METRICS,
                                   "n_pred", "n_truth"]
    assert table["model"].tolist() == ["a"] * 4 + ["b"] * 4
    with pytest.raises(DataError, match="mmd"):
        summary.metrics_table([{k: v for k, v in table.iloc[0].items() if k != "mmd"}])


def test_mean_interval_is_the_t_interval_and_nan_safe():
    values = pd.Series([1.0, 2.0, 4.0, np.nan])
    result = summary.mean_interval(values)
    low, high = stats.t.interval(0.95, 2, loc=7 / 3, scale=stats.sem([1.0, 2.0, 4.0]))
    assert result["mean"] == pytest.approx(7 / 3) and result["n"] == 3
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    single = summary.mean_interval(pd.Series([0.5]))
    assert single["mean"] == 0.5 and single["n"] == 1 and np.isnan(single["ci_low"])
    assert np.isnan(summary.mean_interval(pd.Series([np.nan]))["mean"])


def test_summarise_per_group_over_seeds_and_overall():
    table = make_table({"m": [1, 3, 5, 9]})
    result = summary.summarise(table).set_index(["group", "metric"])
    assert set(result.index.unique("metric")) == set(METRICS)
    assert result.loc[("A", "r2_mean_all"), "mean"] == 2
    assert result.loc[("B", "r2_mean_all"), "n"] == 2
    overall = result.loc[(summary.ALL_GROUPS, "r2_mean_all")]
    assert overall["mean"] == 4.5 and overall["n"] == 4
    expected = summary.mean_interval(pd.Series([1, 3, 5, 9]))
    assert overall["ci_low"] == pytest.approx(expected["ci_low"])
    one_seed = summary.summarise(make_table({"m": [1, 2]}, seeds=(0,)))
    one_seed = one_seed.set_index(["group", "metric"])
    assert one_seed.loc[("A", "mmd"), "n"] == 1 and np.isnan(one_seed.loc[("A", "mmd"), "ci_low"])
    assert one_seed.loc[(summary.ALL_GROUPS, "mmd"), "n"] == 2


def test_baselines_are_found_from_the_registry():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert baseline_models(config) == ["control", "mean_shift", "mean_shift_balanced",
                                               "pca_shift"]


def test_comparisons_pair_runs_and_respect_the_direction():
    table = make_table({"control": [0, 0, 0, 0], "mean_shift": [1, 2, 1, 2],
                        "new": [2, 2.5, 2, 3]})
    result = summary.comparisons(table, ["control", "mean_shift"]).set_index(["metric", "model"])
    for metric in ("r2_mean_all", "mmd"):  # higher and lower is better
        new = result.loc[(metric, "new")]
        assert new["is_winner"] and new["best_baseline"] == "mean_shift"
        assert new["beats_baseline"] and new["groups_won"] == 2 and new["n_pairs"] == 4
        sign = 1 if METRICS[metric] == "higher" else -1
        differences = pd.Series([1, 0.5, 1, 1.0]) * sign
        assert new["difference"] == pytest.approx(differences.mean())
        assert new["difference_ci_low"] == pytest.approx(
            summary.mean_interval(differences)["ci_low"])
        assert new["interval_excludes_zero"]
    assert not result.loc[("mmd", "control"), "beats_baseline"]


def test_summary_markdown_states_winner_margin_and_baseline():
    table = make_table({"control": [0, 0, 0, 0], "mean_shift": [1, 2, 1, 2],
                        "new": [2, 2.5, 2, 3]})
    text = summary.summary_markdown("d", table, ["control", "mean_shift"])
    assert "12 runs: 3 models × 2 held-out groups (A, B) × 2 seeds (0, 1)" in text
    assert ("**r2_mean_all** (higher is better): **new** wins with 2.38, best in 2 of 2 held-out "
            "groups; the best baseline, mean_shift, reaches 1.5: difference 0.875") in text
    assert "**mmd** (lower is better): **new** wins with -2.38" in text
    assert "**new** beats the best baseline on 10 of 10 metrics" in text
    only_baselines = summary.summary_markdown("d", table[table["model"] != "new"],
                                              ["control", "mean_shift"])
    assert "**mean_shift** wins with 1.5" in only_baselines
    assert ("it is the best baseline, and the next baseline, control, reaches 0: difference -1.5"
            in only_baselines)


def test_summary_markdown_names_ties():
    table = make_table({"control": [1, 1, 1, 1], "mean_shift": [1, 1, 1, 1], "new": [0, 0, 0, 0]})
    text = summary.summary_markdown("d", table, ["control", "mean_shift"])
    assert "**control** (tied with mean_shift) wins with 1" in text
    assert "difference 0 (95% CI 0 to 0, 4 pairs)" in text


def test_summary_skips_missing_values_and_handles_no_baseline():
    table = make_table({"control": [3, 3, 3, 3], "mean_shift": [1, 2, 1, 2],
                        "new": [2, 2.5, 2, 3]})
    table.loc[table["model"] == "control", "pearson_delta"] = np.nan  # constant prediction
    text = summary.summary_markdown("d", table, ["control", "mean_shift"])
    assert ("**pearson_delta** (higher is better): **new** wins with 2.38, best in 2 of 2 "
            "held-out groups; the best baseline, mean_shift, reaches 1.5") in text
    assert "**r2_mean_all** (higher is better): **control** wins with 3" in text
    assert "no baseline to compare with" in summary.summary_markdown("d", table, [])
    counts = summary.summarise(table).set_index(["model", "group", "metric"])["n"]
    assert counts["control", summary.ALL_GROUPS, "pearson_delta"] == 0
