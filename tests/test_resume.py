"""Killing the workflow (SIGKILL or SIGTERM, to its whole process group) at several points of the
tiny config, then rerunning the same command each time, ends with metrics byte-identical to an
uninterrupted run, and leaves no temporary file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import GROUP, ROOT, TINY_METRICS, tiny_command
from pertflow.utils import atomic_path, clear_stale_snakemake_locks

RESULTS = Path("results/sim")
SCGEN = RESULTS / "runs" / "scgen" / GROUP / "seed0"


def log_says(path: Path, text: str):
    return lambda workdir: (workdir / path).exists() and text in (workdir / path).read_text()


# Where to interrupt, in the order a run gets there: (signal, the moment, what it interrupts).
INTERRUPTIONS = [
    (signal.SIGKILL, lambda w: (w / RESULTS / "splits" / GROUP / "train.h5ad").exists(),
     "the split job, between writing its first and its last output"),
    (signal.SIGTERM, log_says(SCGEN / "train_predict.log", "epoch 1:"), "scGen's training"),
    (signal.SIGKILL, lambda w: (w / SCGEN / "model").exists(),
     "scGen's job, between saving the model and writing the prediction"),
]


def interrupt(command: list[str], workdir: Path, sig: signal.Signals, moment) -> None:
    """Start the run in a process group of its own and send ``sig`` to the whole group as soon as
    ``moment(workdir)`` holds."""
    assert not moment(workdir), "the moment to interrupt has passed already"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not moment(workdir):
        assert process.poll() is None, "the run ended before the moment to interrupt it"
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        time.sleep(0.02)
    os.killpg(process.pid, sig)
    process.wait(timeout=120)
    deadline = time.monotonic() + 60
    while _group_alive(process.pid) and time.monotonic() < deadline:  # its jobs, too
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    def member(process: psutil.Process) -> bool:
        try:
            return os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE
        except (ProcessLookupError, psutil.Error):
            return False

    return any(member(process) for process in psutil.process_iter())


@pytest.mark.workflow
@pytest.mark.slow
def test_interrupted_runs_resume_to_identical_metrics(reference, tmp_path):
    command = tiny_command(tmp_path)
    for sig, moment, what in INTERRUPTIONS:
        interrupt(command, tmp_path, sig, moment)
        assert not (tmp_path / TINY_METRICS).exists(), f"{what}: the run was not interrupted"
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / TINY_METRICS).read_bytes() == (reference / TINY_METRICS).read_bytes()
    leftovers = [p for p in (tmp_path / "results").rglob("*") if ".part" in p.name]
    assert not leftovers, leftovers


def test_a_failed_write_leaves_nothing_and_a_killed_writes_leftover_is_replaced(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".out.csv.part.csv").write_text("left by a killed run")  # a kill runs no cleanup
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"] and target.read_text() == "done"


def test_only_a_dead_runs_snakemake_locks_are_cleared(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/x")
    alive = clear_stale_snakemake_locks(tmp_path)  # no run holds the directory: stale, removed
    assert not any(locks.iterdir())
    (locks / "0.output.lock").write_text("results/x")
    other = subprocess.run([sys.executable, "-c", "from pertflow.utils import "
                            f"clear_stale_snakemake_locks as clear; clear({str(tmp_path)!r})"],
                           env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
    assert other.returncode == 0 and (locks / "0.output.lock").exists()  # `alive` holds it
    alive.close()
