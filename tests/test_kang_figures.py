"""Every figure of config/kang_valid.yaml (Kang 2018 from ../shared/data, skipped without it) for
one held-out type, with short training."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY_MODELS, assert_figures, run, with_params

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def test_kang_valid_draws_every_figure_for_one_held_out_type(tmp_path, kang_path):
    """The real-data config, short training, CD4T held out: scGen's Figure 2 panels for every
    model (ISG15 the top DEG) and the encoder normalisation ablation side by side."""
    config = with_params(yaml.safe_load((ROOT / "config" / "kang_valid.yaml").read_text()),
                         TINY_MODELS)
    dataset = config["datasets"]["kang_valid"]
    dataset["source"] = {"path": str(kang_path)}
    dataset["held_out"] = ["CD4T"]
    # Every latent model and `control` (the violins' reference); the baselines' figures are the
    # default workflow test's.
    for name in ("mean_shift", "mean_shift_balanced", "pca_shift", "similarity_shift",
                 "transport_shift"):
        del config["models"][name]
    run(tmp_path, config)
    results = tmp_path / "results" / "kang_valid"
    models = list(config["models"])
    assert {"scgen_layernorm", "scgen_nonorm"} <= set(models)
    assert_figures(results / "figures", models,
                   ["scgen", "scgen_layernorm", "scgen_nonorm", "contrastivevi", "transformer"],
                   ["CD4T"], ["scgen", "contrastivevi", "transformer"])
    assert pd.read_csv(results / "splits" / "CD4T" / "degs.csv")["names"][0] == "ISG15"
    # The ablation's entries, each labelled by the param that tells it apart.
    ablation = (results / "logs" / "plot_latent_comparison" / "scgen.log").read_text()
    assert all(f"{name}: norm = {norm}" in ablation for name, norm in (
        ("scgen", "batch"), ("scgen_layernorm", "layer"), ("scgen_nonorm", "none")))
    assert "'scgen_nonorm (norm: none)'" in ablation
