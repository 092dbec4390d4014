"""The workflow on a real SLURM scheduler through profiles/slurm (marker `slurm`).

The fixture brings up a single-node cluster on this machine from Debian's packages (`.ci/run`
installs them): munged, slurmctld and slurmd with the config in tests/slurm/ and one fake GPU. A
tiny config then runs with `--workflow-profile profiles/slurm`; the test checks that every
non-local job went through sbatch, that the GPU model's training job was allocated the GPU, and
that the metrics equal a local run's. Skipped, with the reason, where the cluster cannot be
started (not root, SLURM not installed — `.ci/run` installs it —, another SLURM config
present, daemons failing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CORES, ROOT, TINY_MODELS, default_config
from pertflow.simulate.experiment import simulate
from pertflow.utils import write_h5ad

pytestmark = [pytest.mark.slurm, pytest.mark.workflow, pytest.mark.slow]

HERE = ROOT / "tests" / "slurm"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel"]
# The plugin's in-job runner drops SLURM_CONF, so the config must be where SLURM looks by default.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
TEMPLATE = (HERE / "slurm.conf.in").read_text()
MUNGE_PID = Path("/run/munge/munged.pid")
# The slurm profile's default jobs ask for 4000 MB; the node must hold one.
MIN_NODE_MEMORY_MB = 4096
TARGET = "results/simulated/metrics.csv"
RUN_TIMEOUT_S = 600


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _stop(pid_file: Path) -> None:
    """SIGTERM the daemon named by its pid file and wait until it has gone."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _pid_files(conf: str) -> list[Path]:
    return [Path(p) for p in re.findall(r"^Slurm(?:ctl)?dPidFile=(\S+)", conf, re.M)]


def _require_commands() -> None:
    missing = [c for c in COMMANDS if not shutil.which(c)]
    if missing:
        pytest.skip(f"SLURM commands missing ({missing}): `.ci/run` installs {PACKAGES} with "
                    "apt-get where it can")


def _node_memory_mb() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M).group(1))
    return total_kb // 1024 - 512  # slurmd drains a node configured with more than it has


def _start(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"{' '.join(command)} failed to start: {result.stderr[-1000:]}")


def _start_munged() -> bool:
    """Start munged as the munge user unless one is running; True if this call started it."""
    if MUNGE_PID.exists() and _alive(int(MUNGE_PID.read_text().split()[0])):
        return False
    MUNGE_PID.parent.mkdir(exist_ok=True)
    shutil.chown(MUNGE_PID.parent, "munge", "munge")
    _start(["runuser", "-u", "munge", "--", "munged", "--force"])
    return True


def _wait_for_idle_node(timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if state.stdout.strip() == "idle":
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster (partition debug, node localhost with one fake GPU)."""
    if os.geteuid() != 0:
        pytest.skip("starting SLURM daemons needs root")
    _require_commands()
    marker = TEMPLATE.splitlines()[0]
    if SLURM_CONF.exists():
        previous = SLURM_CONF.read_text()
        if not previous.startswith(marker):
            pytest.skip(f"{SLURM_CONF} holds another cluster's config; not replacing it")
        for pid_file in _pid_files(previous):  # daemons left by an interrupted run of this test
            _stop(pid_file)
    memory_mb = _node_memory_mb()
    if memory_mb < MIN_NODE_MEMORY_MB:
        pytest.skip(f"{memory_mb} MB of memory; the slurm profile's jobs ask for 4000 MB")
    state = tmp_path_factory.mktemp("slurm")
    conf = TEMPLATE.format(state_dir=state, cpus=len(os.sched_getaffinity(0)),
                           memory_mb=memory_mb)
    SLURM_CONF.write_text(conf)
    shutil.copy(HERE / "gres.conf", GRES_CONF)
    started_munged = False
    try:
        started_munged = _start_munged()
        _start(["slurmctld"])
        _start(["slurmd", "-N", "localhost"])
        if not _wait_for_idle_node():
            logs = "".join(p.read_text()[-1000:] for p in state.glob("*.log"))
            pytest.skip(f"the SLURM node did not become idle within 30 s:\n{logs}")
        yield state
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        for pid_file in _pid_files(conf):
            _stop(pid_file)
        if started_munged:
            _stop(MUNGE_PID)
        SLURM_CONF.unlink()
        GRES_CONF.unlink()


def tiny_config(data: Path) -> dict:
    """One held-out group, the control baseline and scGen as a GPU model (asking for the test
    cluster's GPU type), on 600 simulated cells: each stage's jobs fit two cores at once."""
    write_h5ad(simulate(n_cells=600, n_genes=400, n_cell_types=3, seed=0), data)
    config = default_config(scgen=TINY_MODELS["scgen"])
    dataset = config["datasets"]["simulated"]
    dataset["source"] = {"path": str(data)}
    dataset["held_out"] = ["T-helper"]
    dataset["hvg"]["n_top_genes"] = 300
    dataset["qc"]["min_genes"] = 50
    config["models"] = {name: config["models"][name] for name in ("control", "scgen")}
    for entry in config["models"].values():
        entry["mem_mb"] = 1000
    config["models"]["scgen"].update(gpu=1, gpu_model="fake")  # tests/slurm/gres.conf's type
    return config


def scheduler_record(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True,
                          text=True, check=True).stdout


def snakemake(workdir: Path, config: dict, *options: str) -> str:
    """Run the workflow to TARGET in ``workdir`` under a time limit; return its log."""
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ["timeout", "-k", "10", str(RUN_TIMEOUT_S), sys.executable, "-m", "snakemake", TARGET,
         "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "config.yaml"), *options], capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake failed ({result.returncode}):\n{log[-6000:]}"
    return log


def test_workflow_on_slurm_submits_every_job_and_matches_a_local_run(slurm_cluster, tmp_path):
    config = tiny_config(tmp_path / "simulated.h5ad")
    snakemake(tmp_path / "local", config, "--cores", CORES)
    log = snakemake(tmp_path / "cluster", config, "--profile", str(HERE / "profile"),
                    "--workflow-profile", str(ROOT / "profiles" / "slurm"))

    # Every job Snakemake ran remotely was submitted with sbatch; light rules stayed local.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    rule_of = {job: re.search(r"/rule_(\w+)/", path).group(1) for job, path in submitted}
    remote_jobs = re.findall(r"^(?:rule|checkpoint) (\w+):$", log, re.M)
    assert Counter(rule_of.values()) == Counter(remote_jobs)
    assert Counter(rule_of.values()) == {"preprocess": 1, "split": 1, "train_predict": 2,
                                         "evaluate": 2}
    assert set(re.findall(r"^local(?:rule|checkpoint) (\w+):$", log, re.M)) == {
        "held_out_groups", "aggregate_metrics"}
    for _, path in submitted:
        assert Path(path).exists(), path

    # The scheduler's own records: each job ran to completion, labelled with its rule; only the
    # scGen training asked for a GPU, and it was allocated one.
    records = {job: scheduler_record(job) for job in rule_of}
    for job, record in records.items():
        assert "JobState=COMPLETED" in record, record
        assert f"Comment=rule_{rule_of[job]}_wildcards_" in record, record
    gpu_jobs = [job for job, record in records.items() if "TresPerJob=gres:gpu:fake:1" in record]
    assert [rule_of[job] for job in gpu_jobs] == ["train_predict"]
    assert "_scgen_" in records[gpu_jobs[0]] and "JOB_GRES=gpu:fake:1" in records[gpu_jobs[0]]
    assert sum("JOB_GRES=gpu" in record for record in records.values()) == 1

    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cluster" / TARGET),
                                  pd.read_csv(tmp_path / "local" / TARGET))
