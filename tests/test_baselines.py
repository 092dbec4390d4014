import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.errors import ConfigError

KEYS = Keys("condition", "ctrl", "stim", "group")


def hand_made():
    """Group A: 1 control, 3 stimulated cells; group B: 2 control, 1 stimulated. Two genes."""
    X = np.array([[0, 0], [1, 0], [1, 0], [1, 0], [0, 2], [0, 2], [0, 5]], dtype=np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "stim", "stim", "stim", "ctrl", "ctrl", "stim"],
                        "group": ["A", "A", "A", "A", "B", "B", "B"]},
                       index=[f"c{i}" for i in range(7)])
    return ad.AnnData(X, obs=obs)


def test_mean_shift_arithmetic():
    train = hand_made()
    model = get_model_class("mean_shift")(KEYS).fit(train, {}, seed=0)
    # mean(stim) = (3*[1,0] + [0,5]) / 4; mean(ctrl) = ([0,0] + 2*[0,2]) / 3
    assert np.allclose(model.delta, [0.75, 1.25 - 4 / 3])
    control = train[train.obs["condition"] == "ctrl"]
    pred = model.predict(control)
    # A control cell at 0 shifted by the negative delta of gene 1 is clipped at 0 (clip_negative).
    assert np.allclose(pred.X, np.maximum(control.X + model.delta, 0))
    model.params["clip_negative"] = False
    assert np.allclose(model.predict(control).X, control.X + model.delta)
    assert (pred.obs["condition"] == "stim").all() and list(pred.var_names) == ["0", "1"]


def test_balanced_mean_shift_weights_groups_equally():
    model = get_model_class("mean_shift")(KEYS).fit(hand_made(), {"balanced": True}, seed=0)
    # each group resampled to the largest group's size: group means weigh equally
    assert np.allclose(model.delta, [0.5 - 0.0, 2.5 - 1.0])


def test_pca_shift_with_all_components_equals_mean_shift(small_sim, keys):
    mean = get_model_class("mean_shift")(keys).fit(small_sim, {}, seed=0)
    pca = get_model_class("pca_shift")(keys).fit(small_sim, {"n_comps": small_sim.n_vars}, 0)
    control = small_sim[:50]
    assert np.allclose(mean.predict(control).X, pca.predict(control).X, atol=1e-3)


@pytest.mark.parametrize("name", ["control", "mean_shift", "pca_shift"])
def test_save_load_round_trip(name, small_sim, keys, tmp_path):
    model = get_model_class(name)(keys).fit(small_sim, {}, seed=1)
    model.save(tmp_path)
    loaded = get_model_class(name).load(tmp_path)
    assert np.array_equal(model.predict(small_sim[:20]).X, loaded.predict(small_sim[:20]).X)


def test_unknown_model_and_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="'mean_shfit' is not in the registry"):
        get_model_class("mean_shfit")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['balance'\]"):
        get_model_class("mean_shift").check_params({"balance": True})
