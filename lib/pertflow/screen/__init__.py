"""A Perturb-seq screen's analysis, in any cell embedding (a model's salient latent, a PCA):

- ``checks``: the input checks, before anything trains;
- ``effects``: each perturbation's effect against the controls (E-distance, expression
  statistic) with a permutation test;
- ``responders``: per-cell responder calls;
- ``mixscape``: the Mixscape-like baseline and its perturbation signature;
- ``de``: latent and Wilcoxon differential expression;
- ``evaluation``: scores against a simulation's truth (``pertflow.simulate.screen``);
- ``analysis``: prepare, train, cross-fit and analyse, as the workflow runs them;
- ``figures``: the screen's UMAPs and ranked targets;
- ``selection``: which perturbations and cells a measure takes.
"""
