import numpy as np
import pytest

from pertflow.errors import DataError
from pertflow.keys import Keys
from pertflow.data.splits import (HeldOut, choose_held_out, held_out_of, listed_splits,
                             perturbation_labels, split)

PERTURBATIONS = ["infected", "stimulated"]


@pytest.fixture(scope="module")
def three_labels(small_sim, keys):
    """small_sim with every other stimulated cell relabelled 'infected': control and two
    perturbations in every group."""
    adata = small_sim.copy()
    condition = adata.obs[keys.condition].astype(str).to_numpy()
    stimulated = np.flatnonzero(condition == keys.perturbed)
    condition[stimulated[::2]] = "infected"
    adata.obs[keys.condition] = condition
    return adata


def test_no_truth_cell_reaches_training(small_sim, keys):
    for group in small_sim.obs[keys.group].cat.categories:
        parts = split(small_sim, keys, group, hide_other_perturbations=False)
        truth = set(parts["truth"].obs_names)
        assert truth and not truth & set(parts["train"].obs_names)
        assert not truth & set(parts["control"].obs_names)
        assert (parts["truth"].obs[keys.condition] == keys.perturbed).all()
        assert (parts["truth"].obs[keys.group] == group).all()
        assert (parts["control"].obs[keys.condition] == keys.control).all()
        # everything else trains: the held-out controls and every other group's cells
        assert parts["train"].n_obs + parts["truth"].n_obs == small_sim.n_obs


@pytest.mark.parametrize("hide_others", [False, True])
def test_no_truth_cell_reaches_training_with_several_perturbations(three_labels, keys,
                                                                   hide_others):
    obs = three_labels.obs
    for held_out in choose_held_out(three_labels, keys, PERTURBATIONS, "all", 1, "sim"):
        k = Keys(keys.condition, keys.control, held_out.perturbation, keys.group)
        parts = split(three_labels, k, held_out.group, hide_others)
        truth, train = set(parts["truth"].obs_names), set(parts["train"].obs_names)
        in_group = obs[keys.group] == held_out.group
        expected_truth = set(obs_names := obs.index[in_group
                                                   & (obs[keys.condition] == k.perturbed)])
        assert truth == expected_truth and obs_names.size and not truth & train
        other = (set(PERTURBATIONS) - {k.perturbed}).pop()
        others_of_group = set(obs.index[in_group & (obs[keys.condition] == other)])
        # The group's cells under the other perturbation train unless hidden too.
        assert others_of_group and (others_of_group.isdisjoint(train) if hide_others
                                    else others_of_group <= train)
        # Every other cell trains: the group's controls and every other group's cells.
        assert train == set(obs.index) - truth - (others_of_group if hide_others else set())


def test_all_takes_every_perturbation_and_group_pair(three_labels, keys):
    chosen = choose_held_out(three_labels, keys, PERTURBATIONS, "all", 1, "sim")
    groups = list(three_labels.obs[keys.group].cat.categories)
    assert chosen == [HeldOut(p, g) for p in PERTURBATIONS for g in groups]
    pairs = choose_held_out(three_labels, keys, PERTURBATIONS, {"infected": ["B"],
                                                                 "stimulated": "all"}, 1, "sim")
    assert pairs == [HeldOut("infected", "B"), *(HeldOut("stimulated", g) for g in groups)]
    with pytest.raises(DataError, match="names perturbation 'drug'.*infected, stimulated"):
        choose_held_out(three_labels, keys, PERTURBATIONS, {"drug": ["B"]}, 1, "sim")


def test_splits_follow_perturbed_not_the_order_of_a_held_out_mapping(three_labels, keys):
    # The workflow hands a job its params with sorted keys (common.smk's canonical).
    backward = {"stimulated": ["B"], "infected": ["B"]}
    assert choose_held_out(three_labels, keys, PERTURBATIONS, backward, 1, "sim") == [
        HeldOut("infected", "B"), HeldOut("stimulated", "B")]
    assert listed_splits({"perturbed": ["b", "a"], "held_out": {"a": ["B"], "b": ["NK"]}},
                         "d") == [HeldOut("b", "NK"), HeldOut("a", "B")]


def test_a_pair_with_too_few_cells_is_named(three_labels, keys):
    cells = three_labels.obs.groupby([keys.group, keys.condition], observed=True).size()
    n_infected_b = int(cells["B", "infected"])
    with pytest.raises(DataError, match=f"'B' has .* control and {n_infected_b} 'infected' "
                                        f"cells; it needs at least min_cells={n_infected_b + 1}"):
        choose_held_out(three_labels, keys, PERTURBATIONS, {"infected": ["B"]},
                        n_infected_b + 1, "sim")


def test_perturbation_labels_all_list_and_bad_labels():
    present = ["control", "infected", "stimulated"]
    assert perturbation_labels("all", "control", present, "condition", "d") == [
        "infected", "stimulated"]
    assert perturbation_labels(["stimulated"], "control", present, "condition", "d") == [
        "stimulated"]
    with pytest.raises(DataError, match="perturbed label 'control' is the control label"):
        perturbation_labels(["stimulated", "control"], "control", present, "condition", "d")
    with pytest.raises(DataError, match=r"perturbed label 'drug' not found in "
                                        r"obs\['condition'\] \(values: control, infected"):
        perturbation_labels(["drug"], "control", present, "condition", "d")
    with pytest.raises(DataError, match="found no label besides the control"):
        perturbation_labels("all", "control", ["control"], "condition", "d")


def test_split_names_keep_one_perturbation_paths():
    one = {"perturbed": "stimulated", "held_out": ["B", "NK"]}
    assert [h.name(False) for h in listed_splits(one, "d")] == ["B", "NK"]
    assert held_out_of(one, "NK") == HeldOut("stimulated", "NK")
    several = {"perturbed": ["a", "b"], "held_out": {"b": ["NK"]}}
    assert listed_splits(several, "d") == [HeldOut("b", "NK")]
    assert held_out_of(several, "b/NK") == HeldOut("b", "NK")
    assert listed_splits({"perturbed": "all", "held_out": ["B"]}, "d") is None
    assert listed_splits({"perturbed": ["a"], "held_out": {"a": "all"}}, "d") is None


def test_all_skips_small_groups_and_names_them(small_sim, keys, caplog):
    counts = small_sim.obs.groupby([keys.group, keys.condition], observed=True).size()
    fewest = counts.groupby(level=0, observed=True).min()
    smallest, threshold = fewest.idxmin(), int(fewest.min()) + 1
    with caplog.at_level("WARNING"):
        chosen = choose_held_out(small_sim, keys, [keys.perturbed], "all", threshold, "sim")
    assert smallest not in [h.group for h in chosen] and f"'{smallest}'" in caplog.text


def test_listed_groups_are_checked(small_sim, keys):
    labels = [keys.perturbed]
    with pytest.raises(DataError, match="'Nope' not found"):
        choose_held_out(small_sim, keys, labels, ["Nope"], 1, "sim")
    no_controls = small_sim[~((small_sim.obs[keys.group] == "B")
                              & (small_sim.obs[keys.condition] == keys.control)).to_numpy()]
    with pytest.raises(DataError, match="'B' has 0 control"):
        choose_held_out(no_controls, keys, labels, ["B"], 1, "sim")
    assert choose_held_out(small_sim, keys, labels, ["B"], 1, "sim") == [
        HeldOut(keys.perturbed, "B")]
