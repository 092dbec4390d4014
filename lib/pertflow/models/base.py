"""The model interface every predictor implements, and the registry that names them.

A model is fitted on the training cells of one split (every cell except the held-out group's
perturbed cells) and predicts the perturbed expression of the held-out group's control cells, on the
log-normalised scale of ``X``. Adding a model means one module in ``pertflow.models`` whose class is
decorated with ``@register("name")`` and one entry under ``models:`` in the config.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import shutil
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import scipy.sparse as sp

from pertflow.errors import ConfigError
from pertflow.keys import Keys
from pertflow.utils import atomic_path, provenance

_REGISTRY: dict[str, type["Model"]] = {}
log = logging.getLogger(__name__)

# Params every model takes, merged into each class's ``defaults`` (a class may override one).
# clip_negative: predicted log-normalised expression below 0 (which no cell can have) is set to 0;
# false keeps the model's raw output.
COMMON_DEFAULTS: dict[str, Any] = {"clip_negative": True}
COMMON_HELP: dict[str, str] = {
    "clip_negative": "set predicted expression below 0 to 0 (false: keep the raw output)"}


class Model:
    """Base class: subclasses set ``defaults`` and implement ``_fit``, ``predict`` and state I/O.

    ``params`` given to ``fit`` are merged over ``defaults``; a key not in ``defaults`` is an error,
    so a misspelt hyperparameter never trains silently with the default value. ``choices`` and
    ``_check_param_rules`` declare the values a param may take: the config is checked against them
    when it is read, before anything runs.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    # The values a param may take, for params that take one of a few: {param: (value, ...)}.
    choices: ClassVar[dict[str, tuple]] = {}
    # One line per param of ``defaults`` saying what it does (`python -m pertflow models`).
    param_help: ClassVar[dict[str, str]] = {}
    # Cells a training minibatch must hold: models with BatchNorm layers set 2.
    min_batch_cells: ClassVar[int] = 1
    # A reference the models are compared against (summaries list baselines apart).
    is_baseline: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.defaults = {**cls.defaults,
                        **{k: v for k, v in COMMON_DEFAULTS.items() if k not in cls.defaults}}
        helps = getattr(cls, "param_help", None)
        if isinstance(helps, dict):
            cls.param_help = {**helps, **{k: v for k, v in COMMON_HELP.items() if k not in helps}}

    def __init__(self, keys: Keys):
        self.keys = keys
        self.params: dict[str, Any] = dict(self.defaults)
        self.seed: int | None = None
        # How a model that transfers the training groups' responses chose to (pertflow.models.transfer):
        # the chosen settings, the inner leave-one-group-out score and each group's weight.
        self.transfer: dict[str, Any] | None = None

    @classmethod
    def check_params(cls, params: dict[str, Any] | None, where: str = "params") -> dict[str, Any]:
        """``params`` merged over ``defaults``, or a ConfigError naming ``where`` (the config path
        of the params) and the param at fault."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            known = ", ".join(sorted(cls.defaults)) or "(none)"
            raise ConfigError(
                f"{where}: unknown parameter(s) {unknown} for model '{cls.name}'. "
                f"Known parameters: {known}. Fix the spelling or remove them."
            )
        params = {**cls.defaults, **params}
        for key, allowed in cls.choices.items():
            if params[key] not in allowed:
                raise cls.param_error(where, key, params[key], " or ".join(map(repr, allowed)))
        batch_size = params.get("batch_size")
        if batch_size is not None and batch_size < cls.min_batch_cells:
            raise ConfigError(
                f"{where}: batch_size={batch_size}, but model '{cls.name}' needs at least "
                f"{cls.min_batch_cells} cells per training batch (BatchNorm cannot normalise a "
                f"single cell). Set `batch_size` to {cls.min_batch_cells} or more.")
        cls._check_param_rules(params, where)
        return params

    @classmethod
    def _check_param_rules(cls, params: dict[str, Any], where: str) -> None:
        """Rules ``choices`` cannot say (ranges, params that constrain each other): raise
        ``cls.param_error`` on a value that breaks one."""

    @classmethod
    def param_error(cls, where: str, key: str, value: Any, allowed: str) -> ConfigError:
        """The one message for a param value the model does not accept."""
        return ConfigError(f"{where}.{key}: {value!r} is not allowed for model '{cls.name}'; "
                           f"use {allowed}.")

    @classmethod
    def use_threads(cls, n: int) -> None:
        """Compute on ``n`` threads (the job's cores). Models whose library keeps a thread pool
        of its own (torch) size it here; the others need nothing."""

    def fit(self, train: ad.AnnData, params: dict[str, Any] | None, seed: int) -> "Model":
        self.params = self.check_params(params)
        self.seed = int(seed)
        self.check_training_cells(train)
        self._fit(train)
        return self

    def check_training_cells(self, train: ad.AnnData) -> None:
        """Before any training: the training cells must fill one minibatch."""
        need = max(int(self.params.get("batch_size") or 1), self.min_batch_cells)
        if train.n_obs < need:
            raise ConfigError(
                f"model '{self.name}': {train.n_obs} training cells, fewer than one training "
                f"batch needs ({need}; batch_size={self.params.get('batch_size')}). Lower "
                "`batch_size` in the model's params, or use a dataset with more cells.")

    def _fit(self, train: ad.AnnData) -> None:
        raise NotImplementedError

    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        """Predicted perturbed expression of ``control_cells``: same cells, same genes, log scale."""
        raise NotImplementedError

    def embed(self, adata: ad.AnnData) -> dict[str, Any]:
        """Latent coordinates of ``adata``'s cells as {obsm key: array}; latent models override."""
        return {}

    # Persistence: hyperparameters and provenance as JSON next to whatever state the model keeps.
    def save(self, directory: str | Path) -> None:
        """Write into a temporary directory renamed when complete, so an interrupted save never
        leaves a directory that looks finished."""
        directory = Path(directory)
        with atomic_path(directory) as partial:
            partial.mkdir()
            (partial / "model.json").write_text(json.dumps(self.metadata(), indent=2,
                                                           sort_keys=True))
            self._save_state(partial)
            shutil.rmtree(directory, ignore_errors=True)

    def metadata(self) -> dict[str, Any]:
        """What a saved model and its predictions record: model (and the module that defines it,
        so a model of one's own loads again), params, seed, keys and the versions that produced
        them."""
        meta = {"model": self.name, "module": type(self).__module__, "params": self.params,
                "seed": self.seed, "keys": self.keys.as_dict(), "versions": provenance()}
        if self.transfer is not None:
            meta["transfer"] = self.transfer
        return meta

    @classmethod
    def load(cls, directory: str | Path) -> "Model":
        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        model = get_model_class(meta["model"], meta.get("module"))(Keys(**meta["keys"]))
        model.params = {**model.defaults, **meta["params"]}
        model.seed = meta["seed"]
        model.transfer = meta.get("transfer")
        model._load_state(directory)
        return model

    def _save_state(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_state(self, directory: Path) -> None:
        raise NotImplementedError

    def _prediction(self, control_cells: ad.AnnData, X) -> ad.AnnData:
        """Wrap predicted expression as AnnData labelled as perturbed cells of the held-out group;
        values below 0 are set to 0 unless the ``clip_negative`` param is false. Every model's
        prediction passes through here: the one place negative expression is clipped."""
        X = X.copy() if sp.issparse(X) else np.array(X)
        values = X.data if sp.issparse(X) else X
        negative = values < 0
        if negative.any():
            log.info("%s: %d of %d predicted values below 0 (down to %.3g)%s", self.name,
                     negative.sum(), np.prod(X.shape), values.min(),
                     ", set to 0" if self.params.get("clip_negative", True)
                     else "; kept (clip_negative: false)")
            if self.params.get("clip_negative", True):
                values[negative] = 0
        obs = control_cells.obs.copy()
        obs[self.keys.condition] = self.keys.perturbed
        obs["source_cell"] = control_cells.obs_names
        pred = ad.AnnData(X=X, obs=obs, var=control_cells.var[[]].copy())
        pred.obs_names = [f"pred-{name}" for name in control_cells.obs_names]
        # params and transfer as JSON: h5ad cannot store the None values (or the inf) they may hold.
        meta = self.metadata()
        meta["params"] = json.dumps(self.params, sort_keys=True)
        if "transfer" in meta:
            meta["transfer"] = json.dumps(meta["transfer"], sort_keys=True)
        pred.uns["pertflow"] = meta
        return pred


def register(name: str):
    """Class decorator adding a model to the registry under ``name``."""

    def decorate(cls: type[Model]) -> type[Model]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _import_model_modules(name: str | None = None) -> None:
    """Import the module named like the model if there is one, else every model module; so a job
    imports only what it runs (the torch models are slow to import)."""
    import pertflow.models as package

    modules = [info.name for info in pkgutil.iter_modules(package.__path__)
               if info.name not in ("base", "torch_base")]
    for module in [name] if name in modules else modules:
        importlib.import_module(f"pertflow.models.{module}")


def get_model_class(name: str, module: str | None = None) -> type[Model]:
    """Look a model up by name; ``module`` imports a user's own module first (a config plug-in)."""
    if module:
        importlib.import_module(module)
    for scope in (name, None):
        if name not in _REGISTRY:
            _import_model_modules(scope)
    if name not in _REGISTRY:
        raise ConfigError(
            f"model '{name}' is not in the registry. Available: {', '.join(sorted(_REGISTRY))}. "
            "Fix the name under models: in the config, or give `module:` to import your own."
        )
    return _REGISTRY[name]
