# The README's two commands: `make run` (the default benchmark) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast report clean

$(BIN)/snakemake: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip<26"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: $(BIN)/snakemake
	$(BIN)/snakemake --profile profiles/default
	$(BIN)/snakemake --profile profiles/default --report results/report.html

# Both cores: one test module per pytest-xdist worker (a module's fixtures are made once).
test: $(BIN)/snakemake
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=15 tests

# The edit-run loop: unit tests only, no model training or workflow runs (under 3 minutes).
test-fast: $(BIN)/snakemake
	$(BIN)/python -m pytest -q tests -m "not slow and not workflow and not slurm"

clean:
	rm -rf results .snakemake
