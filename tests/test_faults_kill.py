"""kill -9 at chosen moments of a short run, then ``--resume auto`` to the end.

After every kill the run folder holds only whole files (each checkpoint loads with its content
hash verified; a torn write survives only as a hidden temp file of the dead pid, which the
next run removes), and the resumed run ends bit for bit where an uninterrupted run ends: the
same model and optimizer arrays in every checkpoint, the same metrics.csv (wall-clock columns
aside), the same position and history.

The default suite kills deterministically, with the fault hooks of fault_helpers (the process
sends itself SIGKILL at the chosen point, so no kill races the run): inside each of the 9
atomic writes of the run, inside a step of each epoch and inside an evaluation. The slow loop
(``-m slow``, or ``AUTOTRAIN_KILL_LOOP=N`` for N of its kills) adds kills at seeded random
delays from the outside, as a user's ``kill -9`` lands: imports, data loading, anywhere.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from fault_helpers import (
    TEMP_RE,
    TINY,
    assert_resumed_to_reference,
    assert_resumes_to_reference,
    check_run_folder,
    finish,
    kill9,
    run_forked,
    start_cli,
    temp_files,
    tiny_reference,
    wait_for_temp_write,
)

from autotrain.io import find_latest_valid_checkpoint, load_checkpoint

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
    return int(os.environ.get("AUTOTRAIN_KILL_LOOP", FULL_KILLS))


# --------------------------------------------------------------------------- chosen moments

MOMENTS = {  # name -> fault that SIGKILLs the run there
    **{f"write {n} ({name})": {"kill9_in_write": {"match": f".{name}.tmp-*", "after": 64,
                                                   "nth": WRITES[:n].count(name)}}
       for n, name in enumerate(WRITES, start=1)},
    "step 2 (epoch 1)": {"signal_at_step": [9, 2]},
    "last step of epoch 1": {"signal_at_step": [9, "last of epoch 1"]},
    "first evaluation": {"signal_in_eval": 9},
}


@pytest.fixture(scope="module")
def chosen_kills(tmp_path_factory, reference):
    """Every moment of MOMENTS killed once (concurrently), then each run resumed to the end:
    name -> (run folder, killed Result, what the kill left, resumed Result)."""
    steps = reference["checkpoints"]["last.safetensors"].metadata["schedule"]["steps_per_epoch"]
    base = tmp_path_factory.mktemp("kills")
    jobs, runs = {}, {}
    for i, (name, faults) in enumerate(MOMENTS.items()):
        if faults.get("signal_at_step", [None, None])[1] == "last of epoch 1":
            faults = {"signal_at_step": [9, steps]}
        cwd = base / f"moment{i}"
        cwd.mkdir()
        runs[name] = cwd / "run"
        jobs[name] = {"args": train_args(runs[name], resume=False), "cwd": cwd, "faults": faults}
    killed = run_forked(jobs)
    left = {}
    for name, run in runs.items():
        entries = sorted(p.name for p in run.iterdir()) if run.exists() else []
        pids = {int(m.group(2)) for m in map(TEMP_RE.match, entries) if m}
        check_run_folder(run, allowed_temp_pids=pids)  # whole files, before the resume touches them
        left[name] = entries
    resumed = run_forked({name: {"args": train_args(runs[name], resume=True), "cwd": runs[name].parent}
                          for name in runs})
    return {name: (runs[name], killed[name], left[name], resumed[name]) for name in runs}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_9_at_a_chosen_moment_then_resume_matches_uninterrupted_run(moment: str, chosen_kills, reference) -> None:
    run, killed, left, resumed = chosen_kills[moment]
    assert killed.returncode == -9, killed.explain()  # killed there, not finished or failed
    if moment.startswith("write "):
        name = moment.split("(")[1].rstrip(")")
        torn = [e for e in left if TEMP_RE.match(e)]
        assert len(torn) == 1 and torn[0].startswith(f".{name}.tmp-"), left  # the kill hit that write
    else:
        assert not any(TEMP_RE.match(e) for e in left), left
    assert_resumed_to_reference(run, resumed, reference)


# --------------------------------------------------------------------------- random moments


@pytest.mark.slow
def test_kill_9_loop_full(tmp_path: Path, reference, request) -> None:
    """Kills at seeded random moments (AUTOTRAIN_KILL_LOOP=N of them, default 20)."""
    for i in range(kill_count()):
        one_kill(i, tmp_path, reference)


@pytest.mark.slow  # the write-window kills above leave and clean a torn temp file in the default suite
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
