"""kill -9 at seeded moments of a short run, then ``--resume auto`` to the end.

After every kill the run folder holds only whole files (each checkpoint loads with its content
hash verified; a torn write survives only as a hidden temp file of the dead pid, which the
next run removes), and the resumed run ends bit for bit where an uninterrupted run ends: the
same model and optimizer arrays in every checkpoint, the same metrics.csv (wall-clock columns
aside), the same position and history.

Moments are of two kinds: a seeded random delay after the process starts (anywhere: imports,
data loading, a step, an evaluation, a write, a rotation), and the inside of the n-th
atomic write, made wide with ``AUTOTRAIN_FAULT_WRITE_SLEEP`` so the kill lands there for
certain. The default suite runs 3 kills; ``AUTOTRAIN_KILL_LOOP=20`` (or ``-m slow``) runs 20.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from fault_helpers import (
    TINY,
    assert_resumes_to_reference,
    check_run_folder,
    finish,
    kill9,
    start_cli,
    temp_files,
    tiny_reference,
    wait_for_temp_write,
)

from autotrain.io import find_latest_valid_checkpoint, load_checkpoint

DEFAULT_KILLS = 3
FULL_KILLS = 20
WRITE_SLEEP = "0.15"
# The atomic writes of the 2-epoch tiny run, in order (best.safetensors is written when
# val_acc improves, which it does at both epochs of this config; the reference checks it):
WRITES = ["config.yaml", "metrics.csv", "epoch-1.safetensors", "last.safetensors", "best.safetensors",
          "metrics.csv", "epoch-2.safetensors", "last.safetensors", "best.safetensors"]
# Write windows visited in this order (the last epoch's last/best first: a resume that finds a
# finished epoch-N but a stale last.safetensors is the subtle case), then every other one.
WRITE_ORDER = [8, 9, 4, 7, 3, 5, 2, 6, 1]


def train_args(run: Path, resume: bool) -> list[str]:
    args = ["train", str(TINY), "--set", f"output.dir={run}", "-q"]
    return args + (["--resume", "auto"] if resume else [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its checkpoints, metrics and wall time."""
    ref = tiny_reference(tmp_path_factory)
    assert sorted(ref["checkpoints"]) == ["best.safetensors", "epoch-1.safetensors", "epoch-2.safetensors",
                                          "last.safetensors"]
    history = ref["checkpoints"]["last.safetensors"].metadata["history"]
    assert history[1]["val_acc"] > history[0]["val_acc"], "WRITES assumes best improves at both epochs"
    return ref


def after_kill(run: Path, pid: int) -> None:
    """What a kill -9 may leave: whole files, and temp files of the dead writer only."""
    check_run_folder(run, allowed_temp_pids={pid})
    latest = find_latest_valid_checkpoint(run)
    if latest is not None:
        assert not latest.name.startswith(".")
        load_checkpoint(latest)


def resume_to_end(run: Path, cwd: Path, reference) -> None:
    assert_resumes_to_reference(run, cwd, reference)


def kill_at_random_moment(run: Path, cwd: Path, rng: random.Random, wall: float, resume: bool) -> int:
    proc = start_cli(train_args(run, resume), cwd=cwd)
    time.sleep(rng.uniform(0.0, wall))
    kill9(proc)
    return proc.pid


def kill_inside_write(run: Path, cwd: Path, nth: int) -> int:
    proc = start_cli(train_args(run, resume=False), cwd=cwd, env={"AUTOTRAIN_FAULT_WRITE_SLEEP": WRITE_SLEEP})
    temp = wait_for_temp_write(proc, run, nth)
    assert temp is not None, finish(proc, train_args(run, False)).explain()
    assert temp.name.startswith(f".{WRITES[nth - 1]}.tmp-"), (nth, temp.name)
    kill9(proc)
    assert temp.exists(), "the kill should leave the torn temp file behind"
    target = run / WRITES[nth - 1]
    if target.suffix == ".safetensors" and target.exists():
        load_checkpoint(target)  # the previous version, whole
    return proc.pid


def one_kill(i: int, tmp: Path, reference) -> None:
    """Kill i: even i a seeded random moment (every 4th also kills the first resume), odd i
    the inside of a write."""
    cwd = tmp / f"kill{i}"
    cwd.mkdir()
    run = cwd / "run"
    if i % 2 == 0:
        rng = random.Random(1000 + i)
        pid = kill_at_random_moment(run, cwd, rng, reference["wall"], resume=False)
        after_kill(run, pid)
        if i % 4 == 2:
            pid = kill_at_random_moment(run, cwd, rng, reference["wall"], resume=True)
            after_kill(run, pid)
    else:
        pid = kill_inside_write(run, cwd, WRITE_ORDER[(i // 2) % len(WRITE_ORDER)])
        after_kill(run, pid)
    resume_to_end(run, cwd, reference)


def kill_count() -> int:
    return int(os.environ.get("AUTOTRAIN_KILL_LOOP", DEFAULT_KILLS))


@pytest.mark.parametrize("i", range(kill_count()))
def test_kill_9_then_resume_matches_uninterrupted_run(i: int, tmp_path: Path, reference) -> None:
    one_kill(i, tmp_path, reference)


@pytest.mark.slow
def test_kill_9_loop_full(tmp_path: Path, reference, request) -> None:
    """Kills 4-20 of the loop (AUTOTRAIN_KILL_LOOP=20 runs them in the test above instead)."""
    markexpr = request.config.option.markexpr or ""
    if "slow" not in markexpr or "not slow" in markexpr:
        pytest.skip("the full 20-kill loop runs with -m slow (or AUTOTRAIN_KILL_LOOP=20)")
    for i in range(kill_count(), FULL_KILLS):
        one_kill(i, tmp_path, reference)


def test_stray_temp_files_are_ignored_and_cleaned(tmp_path: Path, reference) -> None:
    """A torn temp file named like a checkpoint is never chosen and is removed by the resume."""
    run = tmp_path / "run"
    pid = kill_inside_write(run, tmp_path, WRITES.index("epoch-2.safetensors") + 1)
    [temp] = temp_files(run)
    dead = run / f".last.safetensors.tmp-{pid}"
    dead.write_bytes(temp.read_bytes()[:1000])
    assert find_latest_valid_checkpoint(run).name in ("last.safetensors", "epoch-1.safetensors")
    resume_to_end(run, tmp_path, reference)
    assert not dead.exists()
