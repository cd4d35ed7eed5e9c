"""Fault timings of data-parallel training and the N=1 vs N=2 whole-run difference.

    python benchmarks/distributed_faults.py      # ~2 minutes; writes distributed_faults_last_run.json

Runs the tiny config as tests/test_distributed.py does (sync_bn, batch 30, 2 epochs for the
whole runs; 50 epochs for the runs that get a signal 1.5 s into training) under
``mpiexec -n 2`` from the mpi extra, three trials each: ``kill -9`` of rank 1 (seconds from the
kill to the end of mpiexec, what is left in the run folder), SIGTERM to mpiexec, SIGINT to
rank 1 alone (exit code, seconds to the end, the error lines); NaN on rank 1 only (the fault
hook); then N=1 and N=2 runs to the end: validation accuracy and the weight difference.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from fault_helpers import HELPER, cli_env  # the tests' fault wrapper and environment
from test_distributed import train_args, worst_relative  # the tests' tiny run

from autotrain.io import load_checkpoint

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
TRIALS = 3


def mpiexec_argv(n: int, run: Path, *sets: str) -> list[str]:
    return [MPIEXEC, "-n", str(n), sys.executable, str(HELPER), *train_args(run, *sets)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of ``rank`` among the launcher's descendants (its PMI_RANK)."""
    children = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                env = (proc / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            children[int(proc.name)] = (ppid, env)
    for pid, (ppid, env) in children.items():
        ancestor = ppid
        while ancestor in children and ancestor != launcher:
            ancestor = children[ancestor][0]
        if ancestor == launcher and f"PMI_RANK={rank}".encode() in env:
            return pid
    raise RuntimeError(f"no rank {rank} under pid {launcher}")


def signal_case(work: Path, name: str, deliver) -> dict:
    """Start a 50-epoch run on 2 ranks, ``deliver(launcher)`` a signal 1.5 s into training;
    exit code, seconds from the signal to the launcher's end, error lines, folder left."""
    run = work / name
    proc = subprocess.Popen(mpiexec_argv(2, run, "train.epochs=50"), cwd=work, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / "config.yaml").exists():
        if proc.poll() is not None:
            raise RuntimeError(proc.communicate()[1])
        time.sleep(0.05)
    time.sleep(1.5)
    start = time.monotonic()
    deliver(proc)
    _, err = proc.communicate(timeout=120)
    return {"exit": proc.returncode, "seconds_to_end": round(time.monotonic() - start, 2),
            "error_lines": error_lines(err), "left": sorted(p.name for p in run.iterdir())}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="distributed_faults_"))
    cases = {
        "kill9_rank1": lambda proc: os.kill(rank_pid(proc.pid, 1), signal.SIGKILL),
        "sigterm_mpiexec": lambda proc: proc.send_signal(signal.SIGTERM),
        "sigint_rank1": lambda proc: os.kill(rank_pid(proc.pid, 1), signal.SIGINT),
    }
    res: dict = {name: [signal_case(work, f"{name}{t}", deliver) for t in range(TRIALS)]
                 for name, deliver in cases.items()}
    run = work / "nan"
    r = subprocess.run(mpiexec_argv(2, run), cwd=work, capture_output=True, text=True, check=False,
                       env=cli_env({"AUTOTRAIN_TEST_FAULTS": json.dumps({"rank": 1, "nan_at_step": 4})}))
    res["nan_rank1"] = {"exit": r.returncode, "error_lines": error_lines(r.stderr),
                        "left": sorted(x.name for x in run.iterdir())}
    # whole runs, N=1 vs N=2 (sync_bn, tiny, 2 epochs)
    for n in (1, 2):
        subprocess.run(mpiexec_argv(n, work / f"run{n}"), cwd=work, env=cli_env(), check=True, capture_output=True)
    a, b = (load_checkpoint(work / f"run{n}" / "last.safetensors") for n in (1, 2))
    floats = [k for k in a.model_state if a.model_state[k].dtype.kind == "f"]
    own = {k: float(np.abs(a.model_state[k].astype(np.float64) - b.model_state[k]).max()
                    / max(float(np.abs(a.model_state[k]).max()), 1e-30)) for k in floats}
    worst = max(own, key=own.get)
    res["n1_vs_n2"] = {"val_acc": [c.metadata["history"][-1]["val_acc"] for c in (a, b)],
                       "worst_relative_all": worst_relative(a.model_state, b.model_state),
                       "worst_tensor": [worst, own[worst]], "median_tensor": float(np.median(list(own.values())))}
    shutil.rmtree(work)
    print(json.dumps(res, indent=1))
    (ROOT / "benchmarks" / "distributed_faults_last_run.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
