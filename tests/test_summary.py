import hashlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts
from scipy import stats

from conftest import ROOT, SIM_KEYS
from pertflow.benchmark import summary, verdict, verdict_text
from pertflow.config import baseline_models
from pertflow.errors import DataError
from pertflow.benchmark.metrics import (
    CALIBRATED_COLUMNS,
    CEILING_COLUMNS,
    METRICS,
    VERDICT_METRICS,
)
from pertflow.models import get_model_class


# The metrics the verdict judges (every one but the V-statistic E-distance).
N = len(VERDICT_METRICS)


def make_rows(values: dict[str, list[float]], groups=("A", "B"), seeds=(0, 1),
              perturbation="stimulated") -> list[dict]:
    """One run's metrics per model × group × seed of one perturbation; ``values[model]`` fills
    every metric, in row order, with e_distance and mmd taken as the negated value so that
    "better" agrees across metrics."""
    rows = []
    for model, model_values in values.items():
        runs = [(g, s) for g in groups for s in seeds]
        for (group, seed), value in zip(runs, model_values, strict=True):
            row = {"dataset": "d", "model": model, "perturbation": perturbation, "group": group,
                   "seed": seed, "n_pred": 10, "n_truth": 12}
            row |= {m: value if d == "higher" else -value for m, d in METRICS.items()}
            rows.append(row)
    return rows


def md_of(*args) -> str:
    """summary.md of (dataset, table, baselines[, transfer])."""
    return verdict_text.as_markdown(verdict.verdict_of(*args))


def rst_of(*args) -> str:
    """verdict.rst of (dataset, table, baselines[, transfer])."""
    return verdict_text.as_rst(verdict.verdict_of(*args))


def make_table(values: dict[str, list[float]], groups=("A", "B"), seeds=(0, 1)) -> pd.DataFrame:
    """The metrics table of a dataset of one perturbation (``make_rows``)."""
    return summary.metrics_table(make_rows(values, groups, seeds))


def test_metrics_table_orders_columns_and_rows_and_names_what_is_missing():
    table = make_table({"b": [1, 2, 3, 4], "a": [5, 6, 7, 8]})
    assert list(table.columns) == ["dataset", "model", "perturbation", "group", "seed", *METRICS,
                                   "n_pred", "n_truth", *CEILING_COLUMNS, *CALIBRATED_COLUMNS]
    assert table[CALIBRATED_COLUMNS].isna().all().all()  # rows without a ceiling
    assert table["model"].tolist() == ["a"] * 4 + ["b"] * 4
    with pytest.raises(DataError, match="mmd"):
        summary.metrics_table([{k: v for k, v in table.iloc[0].items() if k != "mmd"}])
    # metrics.json written before datasets had several perturbations: stale, scored again
    with pytest.raises(DataError, match="perturbation.*delete the stale metrics.json"):
        summary.metrics_table([{k: v for k, v in table.iloc[0].items() if k != "perturbation"}])
    # sorted by model, perturbation, group and seed
    mixed = summary.metrics_table(make_rows({"m": [1, 2]}, seeds=(0,), perturbation="b")
                                  + make_rows({"m": [3, 4]}, groups=("B", "A"), seeds=(1,),
                                              perturbation="a"))
    assert list(zip(mixed["perturbation"], mixed["group"], mixed["seed"])) == [
        ("a", "A", 1), ("a", "B", 1), ("b", "A", 0), ("b", "B", 0)]


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
    result = summary.summarise(table)
    assert list(result.columns) == ["model", "perturbation", "group", "metric", "mean", "ci_low",
                                    "ci_high", "n", *summary.CALIBRATION_SUMMARY]
    assert set(result["perturbation"]) == {"stimulated"}
    # per metric (in METRICS' order), each group's rows and then the pooled ones
    assert result["metric"].tolist()[::3] == list(METRICS)
    assert result["group"].tolist()[:3] == ["A", "B", summary.ALL_GROUPS]
    result = result.set_index(["group", "metric"])
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
                                       "pca_shift", "similarity_shift", "transport_shift"]


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
    text = md_of("d", table, ["control", "mean_shift"])
    assert "12 runs: 3 models × 2 held-out groups (A, B) × 2 seeds (0, 1)" in text
    assert ("**r2_mean_all** (higher is better): **new** wins with 2.38, best in 2 of 2 held-out "
            "groups; the best baseline, mean_shift, reaches 1.5: difference 0.875") in text
    assert "**mmd** (lower is better): **new** wins with -2.38" in text
    assert f"**new** beats the best baseline on {N} of {N} metrics" in text
    only_baselines = md_of("d", table[table["model"] != "new"], ["control", "mean_shift"])
    assert "**mean_shift** wins with 1.5" in only_baselines
    # The difference is stated as the header defines it: the other model minus the best baseline.
    assert ("it is the best baseline, and the next baseline, control, reaches 0 (1.5 worse): "
            "difference -1.5 (95% CI -2.42 to -0.581, 4 pairs), control minus mean_shift."
            in only_baselines)
    assert ("**mmd** (lower is better): **mean_shift** wins with -1.5, best in 2 of 2 held-out "
            "groups; it is the best baseline, and the next baseline, control, reaches 0 (1.5 "
            "worse): difference 1.5 (95% CI 0.581 to 2.42, 4 pairs), control minus mean_shift."
            in only_baselines)


def test_summary_markdown_names_ties():
    table = make_table({"control": [1, 1, 1, 1], "mean_shift": [1, 1, 1, 1], "new": [0, 0, 0, 0]})
    text = md_of("d", table, ["control", "mean_shift"])
    # A tie counts as a win for each tied model: the tie-winner is best in every group.
    assert ("**control** (tied with mean_shift) wins with 1, best in 2 of 2 held-out groups; it "
            "is the best baseline, and the next baseline, mean_shift, reaches 1 (as good): "
            "difference 0 (95% CI 0 to 0, 4 pairs), mean_shift minus control.") in text
    result = summary.comparisons(table, ["mean_shift", "control"]).set_index(["metric", "model"])
    for metric in ("r2_mean_all", "mmd"):
        assert result.loc[(metric, "control"), "groups_won"] == 2
        assert result.loc[(metric, "mean_shift"), "groups_won"] == 2
        assert result.loc[(metric, "new"), "groups_won"] == 0
        # The baseline that wins a tie is the best baseline, whatever the list's order.
        assert result.loc[(metric, "new"), "best_baseline"] == "control"


def test_groups_won_counts_ties_per_group_and_ignores_nan():
    table = make_table({"a": [1, 1, 2, 2], "b": [1, 1, 3, 3], "c": [0, 0, 3, 3]})
    table.loc[(table["model"] == "c") & (table["group"] == "A"), "pearson_delta"] = np.nan
    result = summary.comparisons(table, []).set_index(["metric", "model"])
    for metric in ("r2_mean_all", "mmd"):
        won = result.loc[metric, "groups_won"]
        assert won.to_dict() == {"a": 1, "b": 2, "c": 1}
    assert result.loc["pearson_delta", "groups_won"].to_dict() == {"a": 1, "b": 2, "c": 1}


def test_summary_skips_missing_values_and_handles_no_baseline():
    table = make_table({"control": [3, 3, 3, 3], "mean_shift": [1, 2, 1, 2],
                        "new": [2, 2.5, 2, 3]})
    table.loc[table["model"] == "control", "pearson_delta"] = np.nan  # constant prediction
    text = md_of("d", table, ["control", "mean_shift"])
    assert ("**pearson_delta** (higher is better): **new** wins with 2.38, best in 2 of 2 "
            "held-out groups; the best baseline, mean_shift, reaches 1.5") in text
    assert "**r2_mean_all** (higher is better): **control** wins with 3" in text
    assert "no baseline to compare with" in md_of("d", table, [])
    counts = summary.summarise(table).set_index(["model", "group", "metric"])["n"]
    assert counts["control", summary.ALL_GROUPS, "pearson_delta"] == 0


def test_a_metric_no_baseline_has_is_not_counted_ahead_and_pairs_are_whole():
    """`control` alone as baseline: its Pearson-delta is NaN (a constant prediction), so that
    metric has no baseline to beat, and a learned model is not ahead on it."""
    table = make_table({"control": [3, 3, 3, 3], "new": [2, 2.5, 2, 3]})
    table.loc[table["model"] == "control", "pearson_delta"] = np.nan
    standing = next(s for s in verdict.verdict_of("d", table, ["control"]).sections[0].learned
                    if s.model == "new")
    assert "pearson_delta" not in standing.ahead
    text = md_of("d", table, ["control"])
    assert "4 pairs" in text and "4.0 pairs" not in text


def test_comparisons_take_the_strongest_baseline_of_each_metric():
    table = make_table({"control": [0, 0, 0, 0], "mean_shift": [1, 2, 1, 2],
                        "new": [2, 2.5, 2, 3]})
    table.loc[table["model"] == "control", "mmd"] = -5.0  # lower is better: control is strongest
    result = summary.comparisons(table, ["control", "mean_shift"]).set_index(["metric", "model"])
    assert result.loc[("r2_mean_all", "new"), "best_baseline"] == "mean_shift"
    mmd = result.loc[("mmd", "new")]
    assert mmd["best_baseline"] == "control" and mmd["baseline_mean"] == -5
    assert mmd["difference"] == pytest.approx(-2.375 + 5) and not mmd["beats_baseline"]
    assert result.loc[("mmd", "control"), "is_winner"]


# Two held-out groups (A, B) × two seeds of one transferring model; the second seed of A chose a
# plain average (tau None), and another model does not transfer.
def transfer_runs() -> list[dict]:
    choices = {"A": {"C": 0.6, "B": 0.35, "D": 0.05}, "B": {"C": 0.2, "A": 0.7, "D": 0.1}}
    runs = [{"model": "sim", "perturbation": "stimulated", "group": group, "seed": seed,
             "transfer": {"method": "similarity", "space": "genes",
                          "tau": None if (group, seed) == ("A", 1) else 0.1,
                          "alpha": 0.8 if seed == 0 else 0.6, "inner_score": 0.9,
                          "weights": weights}}
            for group, weights in choices.items() for seed in (0, 1)]
    runs.append({"model": "per", "perturbation": "stimulated", "group": "A", "seed": 0,
                 "transfer": {"method": "per_cell", "space": "pca", "k": 20, "alpha": 1.0,
                              "inner_score": float("nan"), "weights": {"B": 0.5, "C": 0.5}}})
    return [*runs, {"model": "control", "perturbation": "stimulated", "group": "A", "seed": 0,
                    "transfer": None}]


def test_read_transfer_reads_what_a_model_records(tmp_path):
    model = get_model_class("mean_shift")(SIM_KEYS)
    model.seed = 0
    control = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    control.obs[SIM_KEYS.condition] = SIM_KEYS.control
    record = {"method": "similarity", "space": "genes", "tau": None, "alpha": 0.8,
              "inner_score": 0.93, "weights": {"B": 0.05, "CD8T": 0.6, "NK": 0.35}}
    model.transfer = record
    model._prediction(control, control.X).write_h5ad(tmp_path / "transfers.h5ad")
    assert summary.read_transfer(tmp_path / "transfers.h5ad") == record
    model.transfer = None
    model._prediction(control, control.X).write_h5ad(tmp_path / "plain.h5ad")
    assert summary.read_transfer(tmp_path / "plain.h5ad") is None


def test_transfer_table_one_row_per_transferring_run(tmp_path):
    table = summary.transfer_table(transfer_runs())
    assert list(table.columns) == [*summary.TRANSFER_COLUMNS[:-1], "inner_score", "weights",
                                   "weight_A", "weight_B", "weight_C", "weight_D"]
    assert list(table.columns[:4]) == ["model", "perturbation", "group", "seed"]
    assert list(zip(table["model"], table["group"], table["seed"])) == [
        ("per", "A", 0), ("sim", "A", 0), ("sim", "A", 1), ("sim", "B", 0), ("sim", "B", 1)]
    first_sim = table.iloc[1]
    assert first_sim["weights"] == "C 0.60, B 0.35, D 0.05"
    assert first_sim["weight_C"] == 0.6 and np.isnan(first_sim["weight_A"])
    assert table.iloc[0]["k"] == 20 and table.iloc[0]["weights"] == "B 0.50, C 0.50"
    # through the CSV, as the summary reads it: tau None is empty, k only for per-cell
    table.to_csv(tmp_path / "transfer.csv", index=False)
    read = pd.read_csv(tmp_path / "transfer.csv", dtype={"group": str})
    assert np.isnan(read.loc[2, "tau"]) and read.loc[1, "tau"] == 0.1 and np.isnan(read.loc[1, "k"])
    none = summary.transfer_table([{"model": "control", "perturbation": "stimulated",
                                    "group": "A", "seed": 0, "transfer": None}])
    none.to_csv(tmp_path / "none.csv", index=False)
    assert (tmp_path / "none.csv").read_text().strip() == ",".join(summary.TRANSFER_COLUMNS)


def test_transfer_overview_averages_seeds():
    overview = summary.transfer_overview(summary.transfer_table(transfer_runs()), top=2)
    sim_a = overview[(overview["model"] == "sim") & (overview["group"] == "A")].iloc[0]
    assert sim_a["settings"] == ("similarity in genes, τ 0.1; "
                                 "similarity in genes, τ none (plain average)")
    assert sim_a["alpha"] == pytest.approx(0.7) and sim_a["n_seeds"] == 2
    assert sim_a["top_weights"] == "C 0.60, B 0.35"
    per = overview[overview["model"] == "per"].iloc[0]
    assert per["settings"] == "per_cell in pca, k 20" and np.isnan(per["inner_score"])
    empty = summary.transfer_overview(pd.DataFrame(columns=summary.TRANSFER_COLUMNS))
    assert empty.empty
    # older predictions recorded the inner score as an R²
    legacy = [run | {"transfer": {key.replace("inner_score", "inner_r2"): value
                                  for key, value in run["transfer"].items()}}
              for run in transfer_runs() if run["transfer"]]
    legacy = summary.transfer_overview(summary.transfer_table(legacy))
    assert legacy.loc[1, "inner_score"] == pytest.approx(0.9)


def test_summary_markdown_says_what_the_transferring_models_chose():
    table = make_table({"control": [0, 0, 0, 0], "sim": [1, 2, 1, 2], "new": [2, 2.5, 2, 3]})
    plain = md_of("d", table, ["control", "sim"])
    assert "Transfer" not in plain
    text = md_of("d", table, ["control", "sim"], summary.transfer_table(transfer_runs()))
    assert text.startswith(plain.rstrip("\n"))
    section = text.split("## Transfer between groups")[1]
    assert "- **sim**: mean chosen α 0.7 over 4 runs (2 held-out groups)" in section
    assert ("  - held out B (similarity in genes, τ 0.1, α 0.7): A 0.70, C 0.20, D 0.10"
            in section)
    assert "- **per**: mean chosen α 1 over 1 runs" in section
    none = md_of("d", table, ["control", "sim"], pd.DataFrame(columns=summary.TRANSFER_COLUMNS))
    assert "No model transfers the responses of the training groups." in none


def rendered(rst: str) -> str:
    """The verdict as the front page renders it (the page's title first), failing on any
    reStructuredText warning."""
    return publish_parts("Title\n=====\n\n" + rst, writer="html",
                         settings_overrides={"halt_level": 2})["html_body"]


def test_verdict_rst_renders_winners_differences_and_transfer():
    table = make_table({"control": [0, 0, 0, 0], "mean_shift": [1, 2, 1, 2],
                        "new_": [2, 2.5, 2, 3], "other": [0.5, 1, 0.5, 1]})
    baselines = ["control", "mean_shift"]
    rst = rst_of("d_1", table, baselines, summary.transfer_table(transfer_runs()))
    body = rendered(rst)
    assert "Dataset d_1" in body and "new_" in body  # names with markup characters read as given
    assert "<strong>new_</strong> 2.38" in body
    # new_ minus mean_shift, per group and seed: 1, 0.5, 1, 1 (its interval excludes zero: bold)
    low, high = summary.mean_interval(pd.Series([1, 0.5, 1, 1.0]))[["ci_low", "ci_high"]]
    assert f"<strong>+0.875 [{low:.3g}, {high:.3g}]</strong>" in body
    assert "-0.875 [" in body  # e_distance and mmd: lower is better
    assert "winner is the strongest baseline" not in body
    assert f"other</strong> is better than the strongest baseline on 0 of {N} metrics" in body
    assert "similarity in genes, τ 0.1; similarity in genes, τ none (plain average)" in body
    assert "C 0.60, B 0.35, D 0.05" in body
    no_transfer = rendered(rst_of("d", table, baselines,
                                  pd.DataFrame(columns=summary.TRANSFER_COLUMNS)))
    assert "No model of this dataset transfers" in no_transfer
    only_baselines = rendered(rst_of("d", table[table["model"].isin(baselines)], baselines))
    assert "winner is the strongest baseline" in only_baselines
    assert "Every model of this dataset is a baseline." in only_baselines
    assert "Transfer" not in only_baselines
    assert "nothing to compare with" in rendered(rst_of("d", table, []))


def test_preprocessing_warnings_follow_the_verdict_once_in_each_format():
    table = make_table({"control": [0, 0, 0, 0], "new": [2, 2.5, 2, 3]})
    plain = verdict.verdict_of("d", table, ["control"])
    warned = verdict.verdict_of("d", table, ["control"], warnings=["rule *a_* matched no gene"])
    text = verdict_text.as_markdown(warned)
    assert text == verdict_text.as_markdown(plain) + \
        "\n**Warning (preprocessing):** rule *a_* matched no gene\n"
    rst = verdict_text.as_rst(warned)
    assert rst == verdict_text.as_rst(plain) + \
        "\n.. warning:: Preprocessing: rule \\*a\\_\\* matched no gene\n"
    assert "rule *a_* matched no gene" in rendered(rst)


# ---------------------------------------------------------------------------------------------
# Datasets of one perturbation read as before; several perturbations are judged one by one.

VALUES = {"control": [0, 0, 0, 0], "mean_shift": [1, 2, 1, 2], "new_": [2, 2.5, 2, 3],
          "other": [0.5, 1, 0.5, 1]}
BASELINES = ["control", "mean_shift"]


def test_one_perturbation_reads_exactly_as_before_perturbations():
    # SHA-256 of summary.md and verdict.rst as written before runs had a perturbation (same runs,
    # same transfer choices): a dataset of one perturbation must not change a byte. A deliberate
    # change of wording updates these.
    table = make_table(VALUES)
    transfer = summary.transfer_table(transfer_runs())
    text = md_of("d_1", table, BASELINES, transfer)
    rst = rst_of("d_1", table, BASELINES, transfer)
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "b5875de2f834a34520b5ceca655d14c9cc222d1f732dc8628abfdd2494e3b019", text
    assert hashlib.sha256(rst.encode()).hexdigest() == \
        "f6b60d961b3c8f3e7bfb2eaed0590ebd990b4d252f66598ebd538e00d7e5b804", rst
    assert "stimulated" not in text + rst and "erturbation" not in text + rst
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        "# Summary of dataset d_1", "## Winner per metric", "## Models against the best baseline",
        "## Transfer between groups"]
    assert "16 runs: 4 models × 2 held-out groups (A, B) × 2 seeds (0, 1)." in text


def two_perturbations() -> pd.DataFrame:
    """new_ wins every metric under "ifn"; under "tnf" mean_shift wins, and new_ trails it. The
    runs of both perturbations pooled would make new_ the winner (2.06 against 1.75)."""
    ifn = make_rows(VALUES, perturbation="ifn")
    tnf = make_rows({"control": [0, 0, 0, 0], "mean_shift": [2, 2, 2, 2.0],
                     "new_": [1.5, 2, 1.5, 2], "other": [3, 1, 1, 1]}, perturbation="tnf")
    return summary.metrics_table(tnf + ifn)


def two_perturbation_transfer() -> pd.DataFrame:
    runs = [run | {"perturbation": perturbation,
                   "transfer": run["transfer"] and run["transfer"] | {"alpha": alpha}}
            for perturbation, alpha in (("ifn", 0.25), ("tnf", 0.75))
            for run in transfer_runs() if perturbation == "ifn" or run["model"] != "per"]
    return summary.transfer_table(runs)


def sections(text: str, marker: str) -> dict[str, str]:
    """The text of each perturbation's section, by perturbation."""
    parts = text.split(marker)[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def test_comparisons_pair_runs_within_a_perturbation():
    table = two_perturbations()
    compared = summary.comparisons(table, BASELINES).set_index(["metric", "model"])
    new = compared.loc[("r2_mean_all", "new_")]
    # 2 perturbations × 2 groups × 2 seeds: 8 pairs, each within one perturbation
    assert new["n_pairs"] == 8 and new["n_groups"] == 4
    wide = table.pivot(index=["perturbation", "group", "seed"], columns="model",
                       values="r2_mean_all")
    differences = wide["new_"] - wide[new["best_baseline"]]
    assert new["difference"] == pytest.approx(differences.mean())
    assert new["difference_ci_low"] == pytest.approx(
        summary.mean_interval(differences)["ci_low"])
    difference = summary.paired_difference(table, "mmd", "new_", "mean_shift")
    assert difference["n"] == 8


def test_summary_markdown_has_a_section_per_perturbation_each_from_its_own_runs():
    table = two_perturbations()
    transfer = two_perturbation_transfer()
    text = md_of("d", table, BASELINES, transfer)
    assert text.startswith("# Summary of dataset d\n\n32 runs: 4 models × 2 perturbations (ifn, "
                           "tnf) × 2 held-out groups (A, B) × 2 seeds (0, 1). Baselines: "
                           "control, mean_shift. Each perturbation is judged on its own runs")
    parts = sections(text, "\n## Perturbation ")
    assert list(parts) == ["ifn", "tnf"]
    ifn, tnf = parts["ifn"], parts["tnf"]
    assert "16 runs: 4 models × 2 held-out groups (A, B) × 2 seeds (0, 1)." in ifn
    assert ("**r2_mean_all** (higher is better): **new_** wins with 2.38, best in 2 of 2 held-out "
            "groups; the best baseline, mean_shift, reaches 1.5: difference 0.875 (95% CI 0.477 "
            "to 1.27, 4 pairs).") in ifn
    # Under tnf the baseline wins (2 against new_'s 1.75), whatever the pooled runs say; the
    # differences pair tnf's runs alone: new_ minus mean_shift is -0.5, 0, -0.5, 0.
    assert ("**r2_mean_all** (higher is better): **mean_shift** wins with 2, best in 2 of 2 "
            "held-out groups; it is the best baseline, and the next model, new_, reaches 1.75 "
            "(0.25 worse): difference -0.25 (95% CI -0.709 to 0.209, 4 pairs), new_ minus "
            "mean_shift.") in tnf
    assert "**mmd** (lower is better): **mean_shift** wins with -2" in tnf
    assert f"- **new_** beats the best baseline on 0 of {N} metrics" in tnf
    assert f"- **other** beats the best baseline on 0 of {N} metrics" in tnf
    # each section reads as the dataset would with that perturbation alone
    for perturbation, part in parts.items():
        alone = md_of("d", table[table["perturbation"] == perturbation], BASELINES,
                      transfer[transfer["perturbation"] == perturbation])
        body = part.split("\n\n", 2)[2].replace("### ", "## ")
        assert alone.split("\n\n", 2)[2] == body.rstrip("\n") + "\n", perturbation
    # the transfer choices of each perturbation in its own section
    assert "- **sim**: mean chosen α 0.25 over 4 runs (2 held-out groups)" in ifn
    assert "- **per**:" in ifn and "- **per**:" not in tnf
    assert "- **sim**: mean chosen α 0.75 over 4 runs" in tnf
    # without its perturbation column, a transfer table cannot be split by perturbation
    with pytest.raises(DataError, match="perturbation"):
        md_of("d", table, BASELINES, transfer.drop(columns="perturbation"))


def test_the_winner_of_each_perturbation_comes_from_its_rows_alone():
    table = two_perturbations()
    pooled = summary.comparisons(table, BASELINES).set_index(["metric", "model"])
    assert pooled.loc[("r2_mean_all", "new_"), "is_winner"]  # over both perturbations
    text = md_of("d", table, BASELINES)
    tnf = sections(text, "\n## Perturbation ")["tnf"]
    winners = [line.split("**")[3] for line in tnf.splitlines() if line.startswith("- **r2")]
    assert winners == ["mean_shift"] * sum(m.startswith("r2") for m in VERDICT_METRICS)


def test_groups_differing_between_perturbations_are_counted_as_splits():
    rows = make_rows(VALUES, perturbation="ifn") + make_rows(
        {m: v[:2] for m, v in VALUES.items()}, groups=("A",), perturbation="tnf")
    table = summary.metrics_table(rows)
    text = md_of("d", table, BASELINES)
    assert "24 runs: 4 models × 3 splits (ifn: A, B; tnf: A) × 2 seeds (0, 1)." in text
    tnf = sections(text, "\n## Perturbation ")["tnf"]
    assert "8 runs: 4 models × 1 held-out group (A) × 2 seeds (0, 1)." in tnf
    assert "best in 1 of 1 held-out groups" in tnf and "2 pairs)" in tnf
    assert "24 runs: 4 models × 3 splits (ifn: A, B; tnf: A) × 2 seeds." in \
        rst_of("d", table, BASELINES)


def test_summarise_pools_the_groups_of_each_perturbation_apart():
    table = two_perturbations()
    result = summary.summarise(table)
    assert list(result.columns[:4]) == ["model", "perturbation", "group", "metric"]
    first = result[result["metric"] == "r2_mean_all"]
    assert list(zip(first["perturbation"], first["group"]))[::4] == [
        ("ifn", "A"), ("ifn", "B"), ("ifn", summary.ALL_GROUPS),
        ("tnf", "A"), ("tnf", "B"), ("tnf", summary.ALL_GROUPS)]
    result = result.set_index(["model", "perturbation", "group", "metric"])
    assert result.loc[("new_", "ifn", summary.ALL_GROUPS, "r2_mean_all"), "mean"] == 2.375
    assert result.loc[("new_", "tnf", summary.ALL_GROUPS, "r2_mean_all"), "mean"] == 1.75
    assert result.loc[("new_", "tnf", summary.ALL_GROUPS, "r2_mean_all"), "n"] == 4
    assert result.loc[("other", "tnf", "A", "r2_mean_all"), "mean"] == 2
    # no row pools the perturbations
    assert len(result) == 4 * 2 * 3 * len(METRICS)


def test_transfer_table_and_overview_keep_perturbations_apart():
    transfer = two_perturbation_transfer()
    assert list(zip(transfer["model"], transfer["perturbation"], transfer["group"],
                    transfer["seed"]))[:4] == [("per", "ifn", "A", 0), ("sim", "ifn", "A", 0),
                                               ("sim", "ifn", "A", 1), ("sim", "ifn", "B", 0)]
    assert transfer["perturbation"].tolist()[5:] == ["tnf"] * 4
    overview = summary.transfer_overview(transfer).set_index(["model", "perturbation", "group"])
    assert overview.loc[("sim", "ifn", "A"), "alpha"] == 0.25
    assert overview.loc[("sim", "tnf", "A"), "alpha"] == 0.75
    assert overview.loc[("sim", "tnf", "A"), "n_seeds"] == 2


def test_verdict_rst_has_a_section_per_perturbation():
    table = two_perturbations()
    rst = rst_of("d", table, BASELINES, two_perturbation_transfer())
    body = rendered(rst)  # "^" below "~" renders without a warning
    assert "32 runs: 4 models × 2 perturbations (ifn, tnf) × 2 held-out groups × 2 seeds." in rst
    parts = sections(rst, "\nPerturbation ")
    assert list(parts) == ["ifn", "tnf"]
    assert parts["ifn"].splitlines()[1] == "~" * len("Perturbation ifn")
    assert "\nWinner per metric\n^^^^" in parts["ifn"]
    assert "   * - r2_mean_all ↑\n     - **new\\_** 2.38\n     - 2 of 2\n     - mean_shift 1.5" \
        in parts["ifn"]
    assert "   * - r2_mean_all ↑\n     - **mean_shift** 2\n     - 2 of 2\n     - mean_shift 2\n" \
        "     - winner is the strongest baseline" in parts["tnf"]
    assert "\nTransfer between groups\n^^^^" in parts["tnf"]
    assert "     - 0.75\n" in parts["tnf"] and "     - 0.75\n" not in parts["ifn"]
    assert "<strong>new_</strong> 2.38" in body and "Perturbation tnf" in body
    alone = rst_of("d", table[table["perturbation"] == "tnf"], BASELINES)
    # the section reads as the dataset would with that perturbation alone
    assert alone.split("Winner per metric")[1].replace("^", "~").rstrip("\n") == \
        parts["tnf"].split("Winner per metric")[1].split("\nTransfer between groups")[0] \
        .replace("^", "~").rstrip("\n")


def centroid_rows(model: str, changes: dict[str, dict], seed: int = 0) -> list[dict]:
    rows = []
    for group, centroids in changes.items():
        row = {"dataset": "d", "model": model, "perturbation": "p", "group": group, "seed": seed,
               "n_pred": 10, "n_truth": 12, "centroid_changes": centroids}
        row |= {m: 0.5 for m in METRICS if m != "discrimination"}
        rows.append(row)
    return rows


def test_metrics_table_adds_the_discrimination_across_held_out_groups():
    """Predictions equal to each group's real change discriminate perfectly (1, and the ceiling's
    halves too, calibrated 1); one prediction for every group does not (0.5 with three groups
    where the shared one is equidistant); a run without halves has no ceiling."""
    truth = {"A": [1.0, 0.0], "B": [0.0, 3.0], "C": [-2.0, 0.0]}
    exact = {g: {"prediction": t, "truth": t, "half_a": t, "half_b": t} for g, t in
             truth.items()}
    shared = {g: {"prediction": [0.0, 0.0], "truth": t, "half_a": t, "half_b": t}
              for g, t in truth.items()}
    shared["A"]["half_a"] = shared["A"]["half_b"] = None
    table = summary.metrics_table(centroid_rows("exact", exact) + centroid_rows("shared", shared))
    assert "centroid_changes" not in table.columns
    table = table.set_index(["model", "group"])
    assert (table.loc["exact", "discrimination"] == 1).all()
    assert (table.loc["exact", "discrimination_ceiling"] == 1).all()
    # A's change is the smallest: no change is already closest to it, so the anchor equals the
    # ceiling and there is nothing to calibrate against
    assert table.loc["exact", "discrimination_calibrated"].fillna(-1).tolist() == [-1, 1, 1]
    # no change, from (0, 0): A at 1, C at 2, B at 3
    assert table.loc["shared", "discrimination"].tolist() == [1.0, 0.0, 0.5]
    assert np.isnan(table.loc[("shared", "A"), "discrimination_ceiling"])
    # B and C with halves, the prediction no change like the control anchor: calibrated 0
    assert table.loc[("shared", "B"), "discrimination_calibrated"] == 0
    # the runs of other models or seeds are not compared with
    alone = summary.metrics_table(centroid_rows("exact", {"A": exact["A"]}))
    assert np.isnan(alone.loc[0, "discrimination"])


def test_summarise_carries_the_ceiling_and_calibrated_scores():
    rows = make_rows({"m": [1, 2, 3, 4]})
    for i, row in enumerate(rows):
        row["r2_mean_all_ceiling"] = 2.0
        row["r2_mean_all_calibrated"] = [0.2, 0.4, 0.6, np.nan][i]
    result = summary.summarise(summary.metrics_table(rows)).set_index(["group", "metric"])
    pooled = result.loc[(summary.ALL_GROUPS, "r2_mean_all")]
    assert pooled["ceiling"] == 2.0 and pooled["calibrated"] == pytest.approx(0.4)
    assert pooled["calibrated_n"] == 3 and pooled["calibrated_ci_low"] < 0.4
    assert np.isnan(result.loc[(summary.ALL_GROUPS, "mmd"), "calibrated"])


def test_verdict_states_calibrated_scores_with_intervals_and_the_rank_test():
    """Calibrated scores of the winner and the strongest baseline in fixed decimals with their
    intervals, in both renderings; a metric without any ceiling says so, never NaN."""
    rows = make_rows({"control": [0, 0, 0, 0], "mean_shift": [1, 2, 1, 2],
                      "new": [2, 2.5, 2, 3]})
    for row in rows:
        value = row["r2_mean_all"]
        row["r2_mean_all_ceiling"] = 3.0
        row["r2_mean_all_calibrated"] = value / 3.0
    table = summary.metrics_table(rows)
    text = md_of("d", table, ["control", "mean_shift"])
    rst = rst_of("d", table, ["control", "mean_shift"])
    assert ("calibrated (0 = control, 1 = ceiling): new 0.79 [0.54, 1.05], the strongest "
            "baseline, mean_shift, 0.50 [0.19, 0.81]; the ceiling itself is 3.00 on average"
            ) in text
    assert "new 0.79 [0.54, 1.05]" in rst and "mean_shift 0.50 [0.19, 0.81]" in rst
    # the other metrics have no ceiling
    assert text.count("no calibrated score") == N - 1 and rst.count("no ceiling") == N - 1
    assert "ranks over 4 blocks (split and seed): Friedman p" in text
    assert "nan" not in text.lower().replace("mean_", "")
    html = publish_parts(rst, writer="html")["html_body"]
    assert "system-message" not in html
