"""Logging for workflow steps: everything, including a failing step's traceback, goes to its log;
the console gets the messages and, for a failure, the error once."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from pertflow.errors import PertflowError


@contextmanager
def log_to(path: str | Path, level: int = logging.INFO):
    """Log to ``path`` and stderr while the block runs.

    A user-facing error (pertflow.errors: a config or data problem) is written to the log with
    its traceback and to the console once, as one line without a traceback, and ends the step
    (exit status 1). Any other exception goes to the log with its traceback and propagates, so
    Python prints its traceback on the console once."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path, mode="w")
    handlers = [file_handler, logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("pertflow")
    try:
        yield logger
    except PertflowError as error:
        _to_log_only(logger, file_handler, "step failed")
        print(f"{type(error).__name__}: {error} (traceback in {path})", file=sys.stderr,
              flush=True)
        raise SystemExit(1) from None
    except BaseException:
        _to_log_only(logger, file_handler, "step failed")
        raise
    finally:
        for handler in handlers:
            handler.flush()


def _to_log_only(logger: logging.Logger, file_handler: logging.Handler, message: str) -> None:
    """The current exception's traceback, written to the log file only."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (),
                               sys.exc_info())
    file_handler.handle(record)


def training_time_left(benchmarks: str | Path, planned: dict[str, int],
                       running: tuple[str, str, int]) -> str | None:
    """A line estimating the training time a run has left, from the benchmark files of the
    trainings already finished (``benchmarks/{model}/{split}/seed{seed}.tsv``): each model's
    unfinished trainings (``planned`` per model, less the finished ones and the ``running`` one,
    whose file is written after it) times that model's mean seconds so far, or the mean of all
    finished trainings for a model with none yet. None before any training has finished."""
    seconds: dict[str, list[float]] = {}
    for path in Path(benchmarks).rglob("seed*.tsv"):  # {model}/{split: one or two parts}/
        seconds.setdefault(path.relative_to(benchmarks).parts[0], []).append(
            float(pd.read_csv(path, sep="\t")["s"][0]))
    if not seconds:
        return None
    model, split, seed = running
    overall = float(np.mean(np.concatenate(list(seconds.values()))))
    left = {name: max(n - len(seconds.get(name, [])) - (name == model), 0)
            for name, n in planned.items()}
    total = sum(n * float(np.mean(seconds.get(name, [overall]))) for name, n in left.items())
    done = sum(map(len, seconds.values())) + 1
    return (f"{done} of {sum(planned.values())} trainings done (the last: {model}, {split}, "
            f"seed {seed}); the {sum(left.values())} left need about {total / 60:.1f} min of "
            "training in all at each model's mean time so far (less with several at once)")


def planned_trainings(chosen: str | Path, models: list[str], n_seeds: int) -> dict[str, int]:
    """Trainings per model a run plans for a dataset: the splits the held_out_groups checkpoint
    chose (its file ``chosen``) × ``n_seeds``, for each of ``models``."""
    n_splits = len(json.loads(Path(chosen).read_text())["splits"])
    return dict.fromkeys(models, n_splits * n_seeds)
