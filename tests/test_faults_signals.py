"""SIGTERM and SIGINT at chosen moments: inside a training step, inside a checkpoint write,
inside an evaluation, and a second SIGINT while the interrupt's own checkpoint is written.

Each time: exit 143 (SIGTERM) or 130 (SIGINT), one ``error:`` line naming the checkpoint, a
valid checkpoint at the interrupted position, no temp file left, and ``--resume auto`` then
ends exactly where an uninterrupted run ends. Signals inside a step or an evaluation are sent
by the process to itself from a wrapped ``train_step``/``evaluate`` (tests/fault_helpers.py), so
the moment is exact; signals inside a write come from outside while the write is held open by
``AUTOTRAIN_FAULT_WRITE_SLEEP``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from fault_helpers import (
    TINY,
    assert_resumes_to_reference,
    check_run_folder,
    finish,
    run_cli,
    start_cli,
    temp_files,
    tiny_reference,
    wait_for_temp_write,
)

from autotrain.io import load_checkpoint

EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}
STEPS_PER_EPOCH = 43  # ceil(1346 / 32) for configs/tiny.yaml
SLEEP = {"AUTOTRAIN_FAULT_WRITE_SLEEP": "0.15"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = tiny_reference(tmp_path_factory)
    assert ref["checkpoints"]["last.safetensors"].metadata["schedule"]["steps_per_epoch"] == STEPS_PER_EPOCH
    return ref


def train_args(run: Path) -> list[str]:
    return ["train", str(TINY), "--set", f"output.dir={run}", "-q"]


def assert_interrupted(result, run: Path, signum: int, step: int) -> None:
    assert result.returncode == EXIT[signum], result.explain()
    last = run / "last.safetensors"
    assert result.errors == [f"error: interrupted by signal {int(signum)}; checkpoint {last}"], result.explain()
    assert result.only_errors_on_stderr, result.explain()
    assert temp_files(run) == []
    checkpoints = check_run_folder(run)  # every file whole, hashes verified
    position = checkpoints["last.safetensors"].metadata["position"]
    # (epoch, batch): epochs done and batches done in the next one; both from the step alone
    assert position == {"epoch": step // STEPS_PER_EPOCH, "batch": step % STEPS_PER_EPOCH, "step": step}, position


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_inside_a_step_checkpoints_that_step(signum, tmp_path: Path, reference) -> None:
    step = STEPS_PER_EPOCH + 7  # epoch 2, batch 7
    run = tmp_path / "run"
    result = run_cli(train_args(run), cwd=tmp_path, faults={"signal_at_step": [int(signum), step]})
    assert_interrupted(result, run, signum, step)
    assert sorted(check_run_folder(run)) == ["best.safetensors", "epoch-1.safetensors", "last.safetensors"]
    assert_resumes_to_reference(run, tmp_path, reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_inside_a_checkpoint_write_lets_it_finish(signum, tmp_path: Path, reference) -> None:
    """Sent while epoch-1.safetensors is half written: that write and the rest of the epoch's
    (last, best) complete, then the run stops at the end of epoch 1."""
    run = tmp_path / "run"
    proc = start_cli(train_args(run), cwd=tmp_path, env=SLEEP)
    temp = wait_for_temp_write(proc, run, 3)  # config.yaml, metrics.csv, epoch-1.safetensors
    assert temp is not None and temp.name.startswith(".epoch-1.safetensors.tmp-"), temp
    proc.send_signal(signum)
    result = finish(proc, train_args(run))
    assert_interrupted(result, run, signum, STEPS_PER_EPOCH)
    assert sorted(check_run_folder(run)) == ["best.safetensors", "epoch-1.safetensors", "last.safetensors"]
    assert_resumes_to_reference(run, tmp_path, reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_inside_evaluation_stops_after_the_epoch_checkpoint(signum, tmp_path: Path, reference) -> None:
    run = tmp_path / "run"
    result = run_cli(train_args(run), cwd=tmp_path, faults={"signal_in_eval": int(signum)})
    assert_interrupted(result, run, signum, STEPS_PER_EPOCH)
    history = load_checkpoint(run / "last.safetensors").metadata["history"]
    assert len(history) == 1 and history[0]["val_acc"] is not None  # the evaluation completed
    assert_resumes_to_reference(run, tmp_path, reference)


def test_second_sigint_while_the_interrupt_checkpoint_is_written(tmp_path: Path, reference) -> None:
    """Ctrl-C at step 5, then Ctrl-C again (and a SIGTERM) while last.safetensors is half written:
    the write completes, exit 130, the checkpoint is whole and at step 5."""
    run = tmp_path / "run"
    args = train_args(run)
    proc = start_cli(args, cwd=tmp_path, env=SLEEP, faults={"signal_at_step": [int(signal.SIGINT), 5]})
    temp = wait_for_temp_write(proc, run, 2)  # config.yaml, then the interrupt's last.safetensors
    assert temp is not None and temp.name.startswith(".last.safetensors.tmp-"), temp
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, args)
    assert_interrupted(result, run, signal.SIGINT, 5)
    assert sorted(check_run_folder(run)) == ["last.safetensors"]
    assert_resumes_to_reference(run, tmp_path, reference)
