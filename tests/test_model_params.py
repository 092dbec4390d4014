"""Params are checked when the config is read: every value a model declares it does not accept
fails there, in one format, before any data is read or any model trained."""

from __future__ import annotations

import re

import pytest

from pertflow.config import baseline_models, check_models
from pertflow.errors import ConfigError
from pertflow.models import get_model_class

MODELS = ["contrastivevi", "control", "mean_shift", "pca_shift", "scgen", "similarity_shift",
          "transformer", "transport_shift"]
WHERE = "config models.entry.params"


def refused(name: str, key: str, value) -> str:
    """The one message's start for a value of ``key`` that model ``name`` does not accept."""
    return re.escape(f"{WHERE}.{key}: {value!r} is not allowed for model '{name}'; use ")


@pytest.mark.parametrize("name", MODELS)
def test_defaults_pass(name):
    cls = get_model_class(name)
    assert cls.check_params({}, WHERE) == cls.defaults


@pytest.mark.parametrize("name, key", [(name, key) for name in MODELS
                                       for key in get_model_class(name).choices])
def test_a_value_outside_the_choices_fails_naming_the_allowed_ones(name, key):
    cls = get_model_class(name)
    allowed = " or ".join(map(repr, cls.choices[key]))
    with pytest.raises(ConfigError, match=refused(name, key, "typo") + re.escape(allowed) + r"\.$"):
        cls.check_params({key: "typo"}, WHERE)
    for value in cls.choices[key]:
        cls.check_params({key: value}, WHERE)


def test_models_declare_their_choices():
    declared = {name: sorted(get_model_class(name).choices) for name in MODELS}
    assert declared["scgen"] == ["delta_groups", "lr_schedule", "norm", "prediction",
                                 "recon_loss", "stop_on"]
    assert declared["contrastivevi"] == ["elbo", "library", "prediction", "salient_transfer"]
    assert declared["similarity_shift"] == declared["transport_shift"] == ["space"]


@pytest.mark.parametrize("name, params, key, allowed", [
    ("scgen", {"validation_fraction": 1.0}, "validation_fraction", "a fraction in [0, 1)"),
    ("contrastivevi", {"validation_fraction": -0.1}, "validation_fraction",
     "a fraction in [0, 1)"),
    ("transformer", {"d_model": 30, "n_heads": 4}, "d_model", "a multiple of n_heads (4)"),
    ("contrastivevi", {"covariates": ["donor"], "salient_transfer": "similarity"},
     "salient_transfer", "'average' with covariates, or drop the covariates"),
    ("scgen", {"device": "gpu"}, "device", "auto, cpu, cuda or cuda:<index>"),
])
def test_rules_between_params_fail_in_the_same_format(name, params, key, allowed):
    with pytest.raises(ConfigError, match=refused(name, key, params[key]) + re.escape(allowed)):
        get_model_class(name).check_params(params, WHERE)


@pytest.mark.parametrize("params", [{"d_model": 32, "n_heads": 4}, {"device": "cuda:1"},
                                    {"device": "cpu"}])
def test_values_the_rules_allow_pass(params):
    get_model_class("transformer").check_params(params, WHERE)


def test_the_config_check_names_the_entry():
    config = {"models": {"scgen_l1": {"model": "scgen", "params": {"recon_loss": "huber"}}}}
    with pytest.raises(ConfigError, match=r"^config models\.scgen_l1\.params\.recon_loss: "
                                          r"'huber' is not allowed for model 'scgen'; "
                                          r"use 'mse' or 'l1'\.$"):
        check_models(config)


def test_fit_checks_the_params_before_reading_the_cells(keys):
    with pytest.raises(ConfigError, match=r"^params\.norm: 'btach' is not allowed"):
        get_model_class("scgen")(keys).fit(None, {"norm": "btach"}, seed=0)


def test_baselines_are_the_classes_that_declare_it():
    config = {"models": {name: {} for name in MODELS}}
    assert baseline_models(config) == ["control", "mean_shift", "pca_shift", "similarity_shift",
                                       "transport_shift"]
