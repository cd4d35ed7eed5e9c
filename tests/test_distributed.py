"""Data-parallel training under a real ``mpiexec -n 2`` (MPICH from the mpi extra).

One step of N=2 against N=1 on the same global batch (synchronised BatchNorm), in float32 and
float64, with even and uneven shards; whole tiny runs: two N=2 runs bit-identical, N=1 vs N=2
within a point of accuracy, resume across world sizes; faults of one rank or of the launcher:
SIGTERM to mpiexec, kill -9 of one rank, NaN on one rank, a config error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from fault_helpers import (
    HELPER,
    ROOT,
    TINY,
    assert_same_checkpoint,
    check_run_folder,
    cli_env,
    metrics_without_timing,
    temp_files,
)

from autotrain.io import load_checkpoint

ONE_STEP = ROOT / "tests" / "mpi" / "one_step.py"
EPOCHS = 2


@pytest.fixture(scope="module")
def mpiexec() -> str:
    require("mpi4py")
    found = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not Path(found).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI: mpiexec (the mpi extra's MPICH) is not installed")
        pytest.skip("no mpiexec")
    return found


def launch(mpiexec: str, n: int, args: list[str], cwd: Path, faults: dict | None = None, timeout: float = 240,
           hosts: str | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n N autotrain ARGS`` (through the fault wrapper when ``faults``)."""
    import json

    env = cli_env({"AUTOTRAIN_TEST_FAULTS": json.dumps(faults)} if faults else None)
    host_args = ["-hosts", hosts] if hosts else []
    cmd = [mpiexec, *host_args, "-n", str(n), sys.executable, str(HELPER), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def train_args(run: Path, *sets: str) -> list[str]:
    # Batch 30 leaves a last batch of 26: tiny's default 32 leaves 2, whose BatchNorm at 1x1
    # (two values a channel) is so ill-conditioned that rounding alone moves the weights.
    args = ["train", str(TINY), "--set", f"output.dir={run}", "--set", f"train.epochs={EPOCHS}",
            "--set", "distributed.sync_bn=true", "--set", "train.batch_size=30",
            "--set", "data.val_fraction=0.75", "-q"]  # 421 training images: 15 steps an epoch
    for s in sets:
        args += ["--set", s]
    return args


def explain(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"


# --------------------------------------------------------------------------- one step


def one_step(mpiexec: str, n: int, tmp: Path, dtype: str, batch: int, steps: int = 1) -> list[dict]:
    """The state after each of ``steps`` steps on ``n`` ranks."""
    out = tmp / f"n{n}-{dtype}-{batch}.npz"
    r = subprocess.run([mpiexec, "-n", str(n), sys.executable, str(ONE_STEP), str(out), str(steps), dtype, "1",
                        str(batch)], env=cli_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, explain(r)
    states = []
    for path in [tmp / f"n{n}-{dtype}-{batch}-step{k}.npz" for k in range(1, steps)] + [out]:
        with np.load(path) as z:
            states.append({k: z[k] for k in z.files})
    return states


def worst_relative(a: dict, b: dict) -> float:
    """max |a - b| over every float tensor, over the largest |a| of all of them."""
    floats = [k for k in a if a[k].dtype.kind == "f"]
    diff = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in floats)
    return diff / max(float(np.abs(a[k]).max()) for k in floats)


@pytest.mark.parametrize("dtype,batch,tol", [("float32", 32, 1e-6), ("float64", 32, 1e-12), ("float64", 7, 1e-12)])
def test_one_step_on_two_ranks_equals_one_process(mpiexec, tmp_path, dtype, batch, tol) -> None:
    """Same global batch, synchronised BatchNorm: the parameters and running statistics after
    the step agree (batch 7: shards of 4 and 3, weighted by their size)."""
    once, single = one_step(mpiexec, 1, tmp_path, dtype, batch, steps=2)
    double = one_step(mpiexec, 2, tmp_path, dtype, batch, steps=2)[-1]
    assert list(single) == list(double)
    assert worst_relative(single, double) <= tol
    assert single["bn1.num_batches_tracked"] == double["bn1.num_batches_tracked"] == 2
    # the comparison can fail: one step of difference is far outside the tolerance
    assert once["bn1.num_batches_tracked"] == 1
    assert worst_relative(single, once) > 1e3 * tol


# --------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def runs(mpiexec, tmp_path_factory) -> dict:
    """Uninterrupted tiny runs: N=2 twice (once started by --nproc, once by mpiexec on a
    loopback host list) and N=1."""
    base = tmp_path_factory.mktemp("dist")
    out = {}
    r = subprocess.run([sys.executable, "-m", "autotrain.cli", *train_args(base / "a"), "--nproc", "2"],
                       cwd=base, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, explain(r)
    out["a"] = base / "a"
    r = launch(mpiexec, 2, train_args(base / "b"), base, hosts="localhost,localhost")
    assert r.returncode == 0, explain(r)
    out["b"] = base / "b"
    r = launch(mpiexec, 1, train_args(base / "one"), base)
    assert r.returncode == 0, explain(r)
    out["one"] = base / "one"
    return out


def test_two_runs_on_two_ranks_are_bit_identical(runs) -> None:
    a, b = check_run_folder(runs["a"]), check_run_folder(runs["b"])
    assert sorted(a) == sorted(b) == ["best.safetensors", "epoch-1.safetensors", "epoch-2.safetensors",
                                      "last.safetensors"]
    for name in a:
        assert_same_checkpoint(a[name], b[name], name)
    assert metrics_without_timing(runs["a"]) == metrics_without_timing(runs["b"])


def test_two_ranks_reach_the_accuracy_of_one_process(runs) -> None:
    one = load_checkpoint(runs["one"] / "last.safetensors")
    two = load_checkpoint(runs["a"] / "last.safetensors")
    acc1, acc2 = one.metadata["history"][-1]["val_acc"], two.metadata["history"][-1]["val_acc"]
    assert abs(acc1 - acc2) <= 0.01, (acc1, acc2)
    assert one.metadata["position"] == two.metadata["position"]
    # Not equal weights: float32 sums in another order, amplified over the steps of a small,
    # fast-moving net (the one-step test above bounds a single step's difference).
    assert worst_relative(one.model_state, two.model_state) > 0


def test_rank_zero_alone_prints_and_writes(mpiexec, tmp_path) -> None:
    r = launch(mpiexec, 2, train_args(tmp_path / "run", "train.epochs=1"), tmp_path)
    assert r.returncode == 0, explain(r)
    assert r.stdout.count("finished: ") == 1 and r.stderr == "", explain(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert temp_files(tmp_path / "run") == []


def test_a_config_error_is_reported_once_with_its_exit_code(mpiexec, tmp_path) -> None:
    r = launch(mpiexec, 2, train_args(tmp_path / "run", "optimizer.lr=abc"), tmp_path)
    assert r.returncode == 2, explain(r)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --set optimizer.lr=abc: optimizer.lr: 'abc' — expected a number"], explain(r)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- faults


def test_nan_on_one_rank_stops_every_rank_before_the_update(mpiexec, tmp_path) -> None:
    r = launch(mpiexec, 2, train_args(tmp_path / "run"), tmp_path, faults={"rank": 1, "nan_at_step": 4})
    assert r.returncode == 5, explain(r)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: loss is nan at epoch 1, step 4 (global step 4); stopped before the update "
                      "(try a lower optimizer.lr)"], explain(r)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]


def test_sigterm_on_one_rank_stops_all_at_one_step_and_resumes_on_another_world_size(mpiexec, runs, tmp_path) -> None:
    """2 -> 1: rank 1 alone gets SIGTERM inside step 5; every rank stops after it (agreed in
    the step's reduction), rank 0 writes last.safetensors, exit 143. One process resumes it to
    the end; then 1 -> 2 the other way round."""
    run = tmp_path / "run"
    r = launch(mpiexec, 2, train_args(run), tmp_path, faults={"rank": 1, "signal_at_step": [15, 5]})
    assert r.returncode == 143, explain(r)
    assert load_checkpoint(run / "last.safetensors").metadata["position"] == {"epoch": 0, "batch": 5, "step": 5}
    r = launch(mpiexec, 1, train_args(run) + ["--resume", "auto"], tmp_path)
    assert r.returncode == 0, explain(r)
    meta = load_checkpoint(run / "last.safetensors").metadata
    assert meta["finished"] and [h["epoch"] for h in meta["history"]] == [1, 2]

    run = tmp_path / "run12"
    r = launch(mpiexec, 1, train_args(run), tmp_path, faults={"signal_at_step": [2, 7]})
    assert r.returncode == 130, explain(r)
    r = launch(mpiexec, 2, train_args(run) + ["--resume", "auto"], tmp_path)
    assert r.returncode == 0, explain(r)
    meta = load_checkpoint(run / "last.safetensors").metadata
    assert meta["finished"] and [h["epoch"] for h in meta["history"]] == [1, 2]


def test_sigterm_to_mpiexec_checkpoints_and_exits_143(mpiexec, tmp_path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, str(HELPER), *train_args(run, "train.epochs=50")],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "config.yaml").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        [f"error: interrupted by signal 15; checkpoint {run / 'last.safetensors'}"]
    meta = load_checkpoint(run / "last.safetensors").metadata
    assert meta["finished"] is False and meta["position"]["step"] >= 1
    assert temp_files(run) == []


def test_kill_9_of_one_rank_ends_the_job_and_resume_is_bit_identical(mpiexec, runs, tmp_path) -> None:
    run = tmp_path / "run"
    start = time.monotonic()
    r = launch(mpiexec, 2, train_args(run), tmp_path, faults={"rank": 1, "signal_at_step": [9, 20]}, timeout=120)
    took = time.monotonic() - start
    assert r.returncode != 0 and took < 30, (took, explain(r))  # the whole run: the end is sooner still
    done = check_run_folder(run)  # whole files only
    assert "epoch-1.safetensors" in done and "epoch-2.safetensors" not in done
    r = launch(mpiexec, 2, train_args(run) + ["--resume", "auto"], tmp_path)
    assert r.returncode == 0, explain(r)
    resumed, reference = check_run_folder(run), check_run_folder(runs["a"])
    assert sorted(resumed) == sorted(reference)
    for name in reference:
        assert_same_checkpoint(resumed[name], reference[name], name)
    assert metrics_without_timing(run) == metrics_without_timing(runs["a"])


def test_a_write_error_on_rank_zero_ends_every_rank_with_its_exit_code(mpiexec, tmp_path) -> None:
    """Only rank 0 writes, so only it meets a full disk: the job must end (exit 6, one error
    line) instead of leaving rank 1 waiting in its next collective."""
    run = tmp_path / "run"
    start = time.monotonic()
    r = launch(mpiexec, 2, train_args(run), tmp_path, timeout=120,
               faults={"rank": 0, "enospc": {"match": ".epoch-1.safetensors.tmp-*", "after": 10}})
    assert r.returncode == 6 and time.monotonic() - start < 60, explain(r)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write {run / 'epoch-1.safetensors'}: No space left on device"], explain(r)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.csv"]


def test_an_error_on_another_rank_alone_is_printed_once_with_its_exit_code(mpiexec, tmp_path) -> None:
    """Rank 1 alone meets a data error (an unreadable file on its host): it prints nothing
    while rank 0 could report the same error, then prints its own line (rank 0 never met it)
    and ends the job with exit 4."""
    run = tmp_path / "run"
    start = time.monotonic()
    r = launch(mpiexec, 2, train_args(run), tmp_path, timeout=120, faults={"rank": 1, "dataset_error_at_step": 3})
    assert r.returncode == 4 and time.monotonic() - start < 60, explain(r)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: fault_helpers: batch of step 3 unreadable on this host"], explain(r)


def test_a_validation_batch_too_small_to_split_is_evaluated_by_rank_zero(mpiexec, tmp_path) -> None:
    """257 validation images: the last batch of 256-image evaluation holds 1, which rank 0
    evaluates alone (rank 1's shard is empty) and the sums still cover all 257."""
    run = tmp_path / "run"
    r = launch(mpiexec, 2, train_args(run, "train.epochs=1", "data.val_fraction=0.1528"), tmp_path)
    assert r.returncode == 0, explain(r)
    meta = load_checkpoint(run / "last.safetensors").metadata
    n_val = meta["data_info"]["num_val"]
    assert n_val % 256 in (1, 2, 3), n_val  # the case under test
    correct = meta["history"][0]["val_acc"] * n_val
    assert abs(correct - round(correct)) < 1e-6


def test_finetune_with_a_frozen_backbone_runs_on_two_ranks(mpiexec, tmp_path) -> None:
    """``autotrain finetune --freeze-backbone --nproc 2`` (the shipped config, 2 epochs): the
    head trains on two ranks, the frozen convolution and BatchNorm weights end bit-identical to
    the shipped ones (no rank's update reaches them), rank 0 alone writes the run folder."""
    from autotrain.io import load_weights

    run = tmp_path / "ft"
    r = subprocess.run([sys.executable, "-m", "autotrain.cli", "finetune", "--freeze-backbone", "--nproc", "2",
                        "--set", f"output.dir={run}", "--set", "train.epochs=2", "-q"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, explain(r)
    assert re.fullmatch(rf"finished: {re.escape(str(run))} \(best val_acc [0-9.]+, [0-9.]+ s, 2 MPI processes\)",
                        r.stdout.strip()), explain(r)  # rank 0 alone prints
    state = check_run_folder(run)["last.safetensors"].model_state
    shipped = load_weights(ROOT / "weights" / "resnet18_fashion04.safetensors")
    frozen = [k for k in state if not k.startswith("fc.") and k.rsplit(".", 1)[-1] in ("weight", "bias")]
    assert len(frozen) == 60  # 20 convolutions, 20 BatchNorm weights and biases
    for k in frozen:
        assert state[k].tobytes() == shipped[k].tobytes(), k
    assert state["fc.weight"].shape[0] == 5 and len(metrics_without_timing(run)) == 2


def test_more_than_one_process_without_the_mpi_extra_says_how_to_install_it(tmp_path) -> None:
    """Without mpi4py: ``--nproc 2`` and a launch by an mpiexec (its PMI_SIZE) both end with
    exit 2 and one line naming the extra; one process trains as before."""
    blocker = tmp_path / "no_mpi"
    (blocker / "mpi4py").mkdir(parents=True)
    (blocker / "mpi4py" / "__init__.py").write_text("raise ImportError('No module named mpi4py (test)')\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env["PYTHONPATH"]])
    args = [sys.executable, "-m", "autotrain.cli", *train_args(tmp_path / "run")]
    for extra_args, extra_env in ((["--nproc", "2"], {}), ([], {"PMI_SIZE": "2", "PMI_RANK": "0"})):
        r = subprocess.run(args + extra_args, cwd=tmp_path, env={**env, **extra_env}, capture_output=True,
                           text=True, timeout=120)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "pip install 'autotrain[mpi]'" in errors[0], explain(r)
        assert not (tmp_path / "run").exists()
    r = subprocess.run(args + ["--set", "train.epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and len(metrics_without_timing(tmp_path / "run")) == 1, explain(r)


@pytest.mark.parametrize("mixed", [False, True], ids=["float32", "float32 and float64"])
def test_combined_gradients_come_back_as_views_of_the_buffer_in_each_gradients_memory_order(
        mpiexec, tmp_path, mixed) -> None:
    """The sums of dense gradients are views of the Allreduce buffer with the strides the
    gradient had (so SGD walks gradient and parameter in the same order; no copy back); a
    gradient that is not one dense block, or whose dtype is not the buffer's (a float64 one
    among float32: the buffer is float64), is summed into itself; extras are summed too."""
    import json

    cmd = [mpiexec, "-n", "2", sys.executable, str(ROOT / "tests" / "mpi" / "combine.py")] + (["--mixed"] if mixed else [])
    out = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["extras"] == [3.0, 4.0]
    assert report["values"] == [True] * (5 if mixed else 4)
    assert report["same_strides"] == [True] * (5 if mixed else 4)
    assert report["views_of_buffer"] == ([False, False, False, False, True] if mixed else [True, True, True, False])
    assert report["strided_is_input"] is True
    assert all(report["dtypes_kept"])
