"""contrastiveVI in Pyro, split as scvi-tools splits a model: ``module`` (the networks, the Pyro
model and guide, the −ELBO written out for training), ``training`` (minibatches, held-back cells,
the optimiser and the loop) and ``model`` (the registered ``contrastivevi`` model: params, fit,
predict, embed, save and load). Importing the package registers the model."""

from pertflow.models.contrastivevi.model import ContrastiveVI

__all__ = ["ContrastiveVI"]
