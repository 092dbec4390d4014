"""Predictors: ``get_model_class(name)`` looks one up; each module registers its own classes."""

from pertflow.models.base import Model, get_model_class, register
from pertflow.models import baselines  # noqa: F401  (cheap built-ins, always registered)

__all__ = ["Model", "get_model_class", "register"]
