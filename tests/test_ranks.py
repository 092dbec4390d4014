import numpy as np
import pandas as pd
import pytest

from pertflow.benchmark import ranks


def ranked_table(order: dict[str, float], n_blocks: int = 10) -> pd.DataFrame:
    """Every block (group, seed) ranks the models alike: value ``order[model]`` plus a block
    offset."""
    rows = [{"model": model, "perturbation": "p", "group": f"g{block % 5}", "seed": block // 5,
             "r2": value + block} for block in range(n_blocks) for model, value in order.items()]
    return pd.DataFrame(rows)


def test_friedman_and_nemenyi_on_consistent_ranks():
    """a always first, b second, c third over 10 blocks: Friedman's χ² = 12/(n k (k+1)) ΣR² −
    3n(k+1) = 20 on 2 degrees of freedom (p = e^-10); Demšar's critical difference for k = 3 at
    0.05 is 2.343·√(k(k+1)/(6n)) = 1.048 ranks, so a–c (2 ranks apart) differ and a–b (1) do
    not."""
    test = ranks.rank_test(ranked_table({"a": 3.0, "b": 2.0, "c": 1.0}), "r2", "higher")
    assert test.n_blocks == 10
    assert test.mean_ranks.to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert test.friedman_p == pytest.approx(np.exp(-10), rel=1e-6)
    assert test.p_value("a", "c") < ranks.ALPHA < test.p_value("a", "b")
    assert [(a, b) for a, b, _ in test.top_pairs()] == [("a", "b"), ("a", "c")]
    # lower is better: the order reverses
    lower = ranks.rank_test(ranked_table({"a": 3.0, "b": 2.0, "c": 1.0}), "r2", "lower")
    assert list(lower.mean_ranks.index) == ["c", "b", "a"]


def test_rank_test_needs_three_models_two_blocks_and_something_to_rank():
    assert ranks.rank_test(ranked_table({"a": 1.0, "b": 2.0}), "r2", "higher") is None
    assert ranks.rank_test(ranked_table({"a": 1.0, "b": 2.0, "c": 3.0}, 1), "r2", "higher") is None
    assert ranks.rank_test(ranked_table({"a": 1.0, "b": 1.0, "c": 1.0}), "r2", "higher") is None
    # a block where a model has no value is left out
    table = ranked_table({"a": 3.0, "b": 2.0, "c": 1.0})
    table.loc[0, "r2"] = np.nan
    assert ranks.rank_test(table, "r2", "higher").n_blocks == 9


def test_format_p_uses_fixed_decimals():
    assert ranks.format_p(0.0312) == "0.031" and ranks.format_p(7.87e-05) == "< 0.001"
    assert ranks.format_p(np.nan) == "n/a"
