import pytest

from pertflow.errors import DataError
from pertflow.splits import choose_held_out_groups, split


def test_no_truth_cell_reaches_training(small_sim, keys):
    for group in small_sim.obs[keys.group].cat.categories:
        parts = split(small_sim, keys, group)
        truth = set(parts["truth"].obs_names)
        assert truth and not truth & set(parts["train"].obs_names)
        assert not truth & set(parts["control"].obs_names)
        assert (parts["truth"].obs[keys.condition] == keys.perturbed).all()
        assert (parts["truth"].obs[keys.group] == group).all()
        assert (parts["control"].obs[keys.condition] == keys.control).all()
        # everything else trains: the held-out controls and every other group's cells
        assert parts["train"].n_obs + parts["truth"].n_obs == small_sim.n_obs


def test_all_skips_small_groups_and_names_them(small_sim, keys, caplog):
    counts = small_sim.obs.groupby([keys.group, keys.condition], observed=True).size()
    fewest = counts.groupby(level=0, observed=True).min()
    smallest, threshold = fewest.idxmin(), int(fewest.min()) + 1
    with caplog.at_level("WARNING"):
        groups = choose_held_out_groups(small_sim, keys, "all", threshold, "sim")
    assert smallest not in groups and f"'{smallest}'" in caplog.text


def test_listed_groups_are_checked(small_sim, keys):
    with pytest.raises(DataError, match="'Nope' not found"):
        choose_held_out_groups(small_sim, keys, ["Nope"], 1, "sim")
    no_controls = small_sim[~((small_sim.obs[keys.group] == "B")
                              & (small_sim.obs[keys.condition] == keys.control)).to_numpy()]
    with pytest.raises(DataError, match="'B' has 0 control"):
        choose_held_out_groups(no_controls, keys, ["B"], 1, "sim")
    assert choose_held_out_groups(small_sim, keys, ["B"], 1, "sim") == ["B"]
