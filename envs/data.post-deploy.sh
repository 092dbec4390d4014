#!/usr/bin/env bash
# Snakemake runs this in each new conda env (envs/<env>.post-deploy.sh links here): the workflow's
# library, editable so jobs run the checkout's code, without dependencies (the env pins them).
# PERTFLOW_ROOT is set by workflow/rules/common.smk.
set -euo pipefail
python -m pip install --quiet --no-deps --no-build-isolation -e "${PERTFLOW_ROOT:?set by the Snakefile}"
