"""Our Pyro contrastiveVI against scvi-tools' ``scvi.external.ContrastiveVI`` on the Kang data.

    .venv/bin/python bench/contrastivevi_vs_reference.py [--epochs 100] [--threads 1]
    .venv/bin/python bench/contrastivevi_vs_reference.py --heldout-group CD4T   # also R² top-100

Both models see the same cells with matched settings (128 hidden, 10 + 10 latents, one layer,
dropout 0.1, batch 128 per group, lr 1e-3, observed library, no Wasserstein penalty, KL warm-up
over 400 epochs, 10 % of the training cells held back for validation, a fixed number of epochs).
A test set of 10 % of the cells, stratified by condition, is kept out of both. For each model it
prints seconds per epoch, condition separation (5-fold kNN accuracy and silhouette) in the salient
and in the background space, and the test cells' −ELBO and reconstruction loss per cell.

scvi-tools is not in the project environment (its 0.19 in bench/.venv-reference predates
ContrastiveVI), so the reference runs this same file in another interpreter, by default
bench/.venv-cvi-reference/bin/python (see bench/README.md); when it is missing, the bench says so
and prints ours only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from pertflow.data.preprocess import recover_counts
from pertflow.utils import dense

DATA = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid.h5ad"
REFERENCE_PYTHON = ROOT / "bench" / ".venv-cvi-reference" / "bin" / "python"
CONDITION, CONTROL, PERTURBED, GROUP = "condition", "control", "stimulated", "cell_type"
MATCHED = {"n_hidden": 128, "n_background_latent": 10, "n_salient_latent": 10, "n_layers": 1,
           "dropout_rate": 0.1, "batch_size": 128}
SEED = 0


def load(path: Path) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    adata.layers["counts"] = recover_counts(adata.X)
    return adata


def test_mask(adata: ad.AnnData, fraction: float = 0.1) -> np.ndarray:
    """A seeded test set of ``fraction`` of each condition's cells."""
    rng = np.random.default_rng(SEED)
    mask = np.zeros(adata.n_obs, dtype=bool)
    for label in (CONTROL, PERTURBED):
        rows = np.flatnonzero(adata.obs[CONDITION].to_numpy() == label)
        mask[rng.choice(rows, size=int(round(fraction * len(rows))), replace=False)] = True
    return mask


def separation(latent: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    knn = cross_val_score(KNeighborsClassifier(n_neighbors=15), latent, labels, cv=5).mean()
    return {"knn": float(knn), "silhouette": float(silhouette_score(latent, labels))}


def scores(background: np.ndarray, salient: np.ndarray, adata: ad.AnnData) -> dict:
    condition = adata.obs[CONDITION].astype(str).to_numpy()
    cell_type = adata.obs[GROUP].astype(str).to_numpy()
    return {"salient_condition": separation(salient, condition),
            "background_condition": separation(background, condition),
            "background_cell_type": separation(background, cell_type)}


def run_ours(adata: ad.AnnData, test: np.ndarray, epochs: int) -> dict:
    from pertflow.keys import Keys
    from pertflow.models import get_model_class

    keys = Keys(CONDITION, CONTROL, PERTURBED, GROUP)
    params = {**MATCHED, "max_epochs": epochs, "early_stopping_patience": None}
    started = time.perf_counter()
    model = get_model_class("contrastivevi")(keys).fit(adata[~test].copy(), params, seed=SEED)
    seconds = time.perf_counter() - started
    latents = model.embed(adata)
    return {"model": "pertflow contrastivevi (Pyro)", "epochs": len(model.history),
            "seconds_per_epoch": seconds / len(model.history),
            **scores(latents["X_background"], latents["X_salient"], adata),
            "test": model.evaluate(adata[test].copy())}


def run_reference(adata: ad.AnnData, test: np.ndarray, epochs: int) -> dict:
    import scvi
    import torch
    from scvi.external import ContrastiveVI

    scvi.settings.seed = SEED
    train = adata[~test].copy()
    ContrastiveVI.setup_anndata(train, layer="counts")
    model = ContrastiveVI(train, **{k: v for k, v in MATCHED.items() if k != "batch_size"})
    condition = train.obs[CONDITION].to_numpy()
    started = time.perf_counter()
    model.train(background_indices=np.flatnonzero(condition == CONTROL).tolist(),
                target_indices=np.flatnonzero(condition == PERTURBED).tolist(),
                max_epochs=epochs, batch_size=MATCHED["batch_size"], train_size=0.9,
                early_stopping=False, accelerator="cpu", enable_progress_bar=False)
    seconds = time.perf_counter() - started

    everything = adata.copy()
    ContrastiveVI.setup_anndata(everything, layer="counts")
    background = model.get_latent_representation(everything, representation_kind="background")
    salient = model.get_latent_representation(everything, representation_kind="salient")
    return {"model": f"scvi-tools {scvi.__version__} ContrastiveVI", "epochs": epochs,
            "seconds_per_epoch": seconds / epochs,
            **scores(background, salient, adata),
            "test": reference_test_losses(model.module, adata[test], torch)}


def reference_test_losses(module, cells: ad.AnnData, torch) -> dict:
    """The reference's −ELBO per test cell, from its own loss pieces: salient latent zeroed for
    controls, whose salient KL is not counted (as in its training loss)."""
    from scvi import REGISTRY_KEYS

    module.eval()
    x = torch.as_tensor(dense(cells.layers["counts"]), dtype=torch.float32)
    batch_index = torch.zeros((x.shape[0], 1), dtype=torch.long)
    is_control = torch.as_tensor(cells.obs[CONDITION].to_numpy() == CONTROL)
    with torch.no_grad():
        inference = module._generic_inference(x=x, batch_index=batch_index)
        salient = torch.where(is_control[:, None], 0.0, inference["s"])
        generative = module._generic_generative(z=inference["z"], s=salient,
                                                library=inference["library"],
                                                batch_index=batch_index)
        tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: batch_index}
        losses = module._generic_loss(tensors, inference, generative)
    kl_salient = torch.where(is_control, 0.0, losses["kl_s"])
    loss = losses["recon_loss"] + losses["kl_z"] + kl_salient + losses["kl_library"]
    return {"loss": float(loss.mean()), "reconstruction_loss": float(losses["recon_loss"].mean())}


def heldout_r2(adata: ad.AnnData, group: str) -> dict:
    """Train ours (default settings) on every cell but ``group``'s stimulated ones and score the
    prediction from its controls, for both ways of mapping the decoder output to X's scale."""
    from pertflow.keys import Keys
    from pertflow.benchmark.metrics import score, top_degs
    from pertflow.models import get_model_class
    from pertflow.data.splits import split

    keys = Keys(CONDITION, CONTROL, PERTURBED, GROUP)
    parts = split(adata, keys, group, hide_other_perturbations=False)
    train, controls, truth = parts["train"], parts["control"], parts["truth"]
    model = get_model_class("contrastivevi")(keys)
    model.fit(train, {}, seed=SEED)
    degs = top_degs(truth, controls)["names"].tolist()
    perturbed = train[(train.obs[CONDITION] == PERTURBED).to_numpy(), truth.var_names]
    reference = dense(perturbed.X).astype(np.float64).mean(axis=0)
    results = {"epochs": len(model.history)}
    for mode in ("expected", "sampled"):
        model.params["prediction"] = mode
        results[mode] = score(model.predict(controls), truth, controls, degs, reference, SEED)
    return results


def report(result: dict) -> None:
    print(f"\n== {result['model']}: {result['epochs']} epochs")
    print(f"  seconds per epoch                   {result['seconds_per_epoch']:.3f}")
    for space in ("salient_condition", "background_condition", "background_cell_type"):
        s = result[space]
        print(f"  {space:<35} kNN accuracy {s['knn']:.3f}  silhouette {s['silhouette']:+.3f}")
    print(f"  test −ELBO per cell                 {result['test']['loss']:.2f}")
    print(f"  test reconstruction loss per cell   {result['test']['reconstruction_loss']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, same for both")
    parser.add_argument("--reference-python", type=Path, default=REFERENCE_PYTHON)
    parser.add_argument("--heldout-group", help="also fit ours (defaults) without this group's "
                        "stimulated cells and score its prediction")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    adata = load(args.data)
    test = test_mask(adata)
    if args.reference_only:  # child process inside the reference environment
        print(json.dumps(run_reference(adata, test, args.epochs)))
        return

    print(f"data: {args.data.name}, {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{test.sum()} test cells; torch threads {args.threads}")
    report(run_ours(adata, test, args.epochs))
    if not args.reference_python.exists():
        print(f"\nreference: scvi-tools ContrastiveVI not run, no interpreter at "
              f"{args.reference_python} (set one up as in bench/README.md).")
    else:
        child = subprocess.run(
            [str(args.reference_python), __file__, "--reference-only", "--data", str(args.data),
             "--epochs", str(args.epochs), "--threads", str(args.threads)],
            capture_output=True, text=True,  # pertflow (load, dense) is not installed there
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))})
        if child.returncode != 0:
            print(f"\nreference failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        else:
            report(json.loads(child.stdout.strip().splitlines()[-1]))
    if args.heldout_group:
        results = heldout_r2(adata, args.heldout_group)
        print(f"\n== ours, {args.heldout_group} stimulated held out "
              f"({results['epochs']} epochs, early stopping)")
        for mode in ("expected", "sampled"):
            print(f"  prediction: {mode:<9}" + "  ".join(
                f"{name} {value:.3f}" for name, value in results[mode].items()
                if name.startswith(("r2", "pearson"))))


if __name__ == "__main__":
    main()
