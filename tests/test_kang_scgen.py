"""scGen on real data (Kang 2018 from ../shared/data, skipped without it): with CD4T held out it
predicts the stimulated cells' top-100 DEG means better than leaving the controls unchanged."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from pertflow.benchmark.metrics import r2_mean, top_degs
from pertflow.data.splits import split
from pertflow.keys import Keys
from pertflow.models import get_model_class

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# Margin over `control` (R² top-100 0.649): 8 epochs of scGen beat it by 0.060 to 0.111 over
# seeds 0-4 and 1 or 2 torch threads on one machine, and by 0.096 on another (0.745 against
# 0.749 needed, when the bar was 0.1). The float path moves the margin by a few hundredths, so
# the bar sits at half the smallest margin measured.
MARGIN = 0.03


def test_kang_cd4t_beats_the_control_baseline(kang_path):
    adata = ad.read_h5ad(kang_path)
    keys = Keys(condition="condition", control="control", perturbed="stimulated",
                group="cell_type")
    parts = split(adata, keys, "CD4T", hide_other_perturbations=False)
    top = parts["truth"].var_names.get_indexer(
        top_degs(parts["truth"], parts["control"], 100)["names"].tolist())
    truth = parts["truth"].X.toarray()

    def r2_top(model):
        return r2_mean(np.asarray(model.predict(parts["control"]).X)[:, top], truth[:, top])

    params = {"max_epochs": 8, "patience": None, "device": "cpu"}
    scgen = get_model_class("scgen")(keys).fit(parts["train"], params, seed=0)
    control = get_model_class("control")(keys).fit(parts["train"], {}, seed=0)
    assert r2_top(scgen) > r2_top(control) + MARGIN
