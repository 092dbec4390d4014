# Perturb-seq screens (`screens:` in the config): contrastiveVI on all cells, then the
# per-perturbation analysis in its salient space (lib/pertflow/screen/analysis.py). Paths and
# input functions in common.smk.
SCREEN_OUTPUTS = expand(
    [
        f"{SCREEN}/perturbations.csv",
        f"{SCREEN}/figures/screen_umaps.png",
        f"{SCREEN}/figures/screen_ranked.png",
    ],
    screen=SCREENS,
)


rule screen_simulate:
    output:
        f"{SCREEN}/simulated_screen.h5ad",
    log:
        f"{SCREEN}/logs/screen_simulate.log",
    benchmark:
        f"{SCREEN}/benchmarks/screen_simulate.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        simulate=lambda w: canonical(screen_spec(w)["source"]["simulate"]),
    script:
        "../../scripts/screen_simulate.py"


# Checks the screen (control cells, labels, covariates, integer counts) before anything trains,
# then QC, normalisation, cell-cycle phase on all genes and HVGs.
rule screen_prepare:
    input:
        screen_raw,
    output:
        f"{SCREEN}/cells.h5ad",
    log:
        f"{SCREEN}/logs/screen_prepare.log",
    benchmark:
        f"{SCREEN}/benchmarks/screen_prepare.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        spec=lambda w: canonical(
            {
                k: v
                for k, v in screen_spec(w).items()
                if k not in ("params", "n_permutations", "n_samples")
            }
        ),
        seed=lambda w: screen_spec(w)["seed"],
    script:
        "../../scripts/screen_prepare.py"


# The model on all cells ({fit} = all) gives the UMAPs and latent DEGs; one model per
# cross-fitting fold ({fit} = fold<k>, trained on the other folds) embeds that fold's cells
# for the effects and responder calls.
rule screen_train:
    input:
        f"{SCREEN}/cells.h5ad",
    output:
        directory(f"{SCREEN}/models/{{fit}}"),
    log:
        f"{SCREEN}/logs/screen_train/{{fit}}.log",
    benchmark:
        f"{SCREEN}/benchmarks/screen_train/{{fit}}.tsv"
    conda:
        "../../envs/models.yaml"
    params:
        spec=lambda w: canonical(
            {
                k: v
                for k, v in screen_spec(w).items()
                if k in ("perturbation_key", "control", "covariates", "params")
            }
        ),
        fold=lambda w: None if w.fit == "all" else int(w.fit.removeprefix("fold")),
        seed=lambda w: screen_spec(w)["seed"],
    script:
        "../../scripts/screen_train.py"


rule screen_analyse:
    input:
        cells=f"{SCREEN}/cells.h5ad",
        model=f"{SCREEN}/models/all",
        fold_models=screen_fold_models,
    output:
        table=report(
            f"{SCREEN}/perturbations.csv",
            caption="../report/screen_table.rst",
            category="Screen",
        ),
        latent_de=f"{SCREEN}/latent_de.csv",
        latents=f"{SCREEN}/latents.h5ad",
    log:
        f"{SCREEN}/logs/screen_analyse.log",
    benchmark:
        f"{SCREEN}/benchmarks/screen_analyse.tsv"
    conda:
        "../../envs/models.yaml"
    params:
        spec=lambda w: canonical(screen_spec(w)),
        seed=lambda w: screen_spec(w)["seed"],
    script:
        "../../scripts/screen_analyse.py"


rule screen_figures:
    input:
        latents=f"{SCREEN}/latents.h5ad",
        table=f"{SCREEN}/perturbations.csv",
    output:
        umaps=report(
            f"{SCREEN}/figures/screen_umaps.png",
            caption="../report/screen_umaps.rst",
            category="Screen",
        ),
        ranked=report(
            f"{SCREEN}/figures/screen_ranked.png",
            caption="../report/screen_ranked.rst",
            category="Screen",
        ),
    log:
        f"{SCREEN}/logs/screen_figures.log",
    benchmark:
        f"{SCREEN}/benchmarks/screen_figures.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        spec=lambda w: {"perturbation_key": screen_spec(w)["perturbation_key"]},
        seed=lambda w: screen_spec(w)["seed"],
    script:
        "../../scripts/screen_figures.py"
