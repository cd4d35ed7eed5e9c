"""A full disk during a run, checkpoint rotation, and an unusable output folder, through the CLI.

ENOSPC comes two ways: a real size-limited tmpfs (when this process may mount one, as root in
a container usually can), and everywhere a wrapper that makes writes to chosen files fail with
``OSError(ENOSPC)`` after N bytes (tests/fault_helpers.py). Either way: exit 6, one line
naming the file that could not be written, the temp file removed, and every earlier file
byte-identical to what was last written to it (a write log records each file's sha256 at its
last ``os.replace``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
from fault_helpers import (
    TINY,
    assert_resumes_to_reference,
    check_run_folder,
    finish,
    read_write_log,
    run_cli,
    run_forked,
    sha256,
    start_cli,
    temp_files,
    tiny_reference,
    wait_for_file,
)

ENOSPC_TEXT = os.strerror(28)  # "No space left on device"


def train_args(run: Path, *sets: str) -> list[str]:
    args = ["train", str(TINY), "--set", f"output.dir={run}", "-q"]
    for s in sets:
        args += ["--set", s]
    return args


def assert_untouched_since_last_write(run: Path, log: Path) -> dict[str, str]:
    """Every file in ``run`` has the content of its last completed write; returns name -> sha."""
    last_sha = {Path(p).name: digest for p, digest in read_write_log(log)}
    present = {p.name: sha256(p) for p in run.iterdir()}
    assert present == {name: last_sha[name] for name in present}, "a file changed after its last write"
    return present


def assert_disk_full(result, run: Path, victim: str) -> None:
    assert result.returncode == 6, result.explain()
    assert result.errors == [f"error: cannot write {run / victim}: {ENOSPC_TEXT}"], result.explain()
    assert result.only_errors_on_stderr, result.explain()
    assert temp_files(run) == [], "the temp file of the failed write must be removed"


# --------------------------------------------------------------------------- injected ENOSPC

SURVIVORS = {  # what each first failing write leaves in the 2-epoch tiny run
    "config.yaml": [],
    "metrics.csv": ["config.yaml"],
    "epoch-2.safetensors": ["best.safetensors", "config.yaml", "epoch-1.safetensors", "last.safetensors",
                            "metrics.csv"],
    "last.safetensors": ["config.yaml", "epoch-1.safetensors", "metrics.csv"],
}
THIRD_SAVE = {"epoch-3.safetensors": 1, "last.safetensors": 3}  # victim -> which opening of it fails
ROTATION_SETS = ["train.epochs=10", "data.classes=[0,1]", "model.num_classes=2", "train.batch_size=128"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every injected-fault run of this module, run concurrently: name -> (run folder, log, Result)."""
    base = tmp_path_factory.mktemp("disk")
    jobs, where = {}, {}
    plan = {f"first {v}": ([], {"match": f".{v}.tmp-*", "after": 10}) for v in SURVIVORS}
    plan.update({f"third {v}": (["train.epochs=3"], {"match": f".{v}.tmp-*", "after": 200, "nth": n})
                 for v, n in THIRD_SAVE.items()})
    plan["rotation"] = (ROTATION_SETS, None)
    for i, (name, (sets, enospc)) in enumerate(plan.items()):
        folder = base / f"case{i}"
        folder.mkdir()
        run, log = folder / "run", folder / "writes.log"
        faults = {"log_writes": str(log)}
        if enospc:
            faults["enospc"] = enospc
        jobs[name] = {"args": train_args(run, *sets), "cwd": folder, "faults": faults}
        where[name] = (run, log)
    results = run_forked(jobs)
    return {name: (*where[name], results[name]) for name in plan}


@pytest.mark.parametrize("victim", sorted(SURVIVORS))
def test_enospc_exits_6_naming_the_file_and_keeps_the_rest(victim: str, runs) -> None:
    run, log, result = runs[f"first {victim}"]
    assert_disk_full(result, run, victim)
    assert sorted(p.name for p in run.iterdir()) == SURVIVORS[victim]
    assert_untouched_since_last_write(run, log)
    check_run_folder(run)  # every checkpoint left loads, hash verified


def test_keep_last_2_over_10_saves_leaves_the_two_newest(runs) -> None:
    run, log, result = runs["rotation"]
    assert result.returncode == 0, result.explain()
    saved = [Path(p).name for p, _ in read_write_log(log) if Path(p).name.startswith("epoch-")]
    assert saved == [f"epoch-{n}.safetensors" for n in range(1, 11)]
    checkpoints = check_run_folder(run)
    assert sorted(checkpoints) == ["best.safetensors", "epoch-10.safetensors", "epoch-9.safetensors",
                                   "last.safetensors"]
    assert checkpoints["epoch-10.safetensors"].sha256 == checkpoints["last.safetensors"].sha256
    assert checkpoints["epoch-9.safetensors"].metadata["epoch"] == 9


@pytest.mark.parametrize("victim", sorted(THIRD_SAVE))
def test_a_failed_third_save_loses_nothing(victim: str, runs) -> None:
    """keep_last 2: ENOSPC at the third epoch's save (epoch-3, or the third last.safetensors)
    leaves epochs 1 and 2 (rotation runs only after a complete save) and last at epoch 2."""
    run, log, result = runs[f"third {victim}"]
    assert_disk_full(result, run, victim)
    checkpoints = check_run_folder(run)
    assert {"epoch-1.safetensors", "epoch-2.safetensors", "last.safetensors"} <= set(checkpoints)
    assert checkpoints["last.safetensors"].metadata["epoch"] == 2
    assert checkpoints["last.safetensors"].sha256 == checkpoints["epoch-2.safetensors"].sha256
    assert_untouched_since_last_write(run, log)


# --------------------------------------------------------------------------- a real full tmpfs


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str):
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command here; the injected-ENOSPC tests cover the same paths")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the injected-ENOSPC tests cover the same paths")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def pages(n: int) -> int:
    return -(-n // 4096) * 4096


def test_real_full_tmpfs_exits_6_then_resumes_after_space_is_freed(tmp_path: Path, tmp_path_factory) -> None:
    reference = tiny_reference(tmp_path_factory)
    sizes = {p.name: p.stat().st_size for p in reference["run"].iterdir()}
    # room for everything epoch 1 writes, the second metrics.csv, and half of epoch-2.safetensors
    first_epoch = ["config.yaml", "metrics.csv", "epoch-1.safetensors", "last.safetensors", "best.safetensors"]
    size = sum(pages(sizes[n]) for n in first_epoch) + pages(sizes["metrics.csv"]) \
        + pages(sizes["epoch-2.safetensors"] // 2)
    with mounted_tmpfs(tmp_path / "disk", f"size={size}") as disk:
        run = disk / "run"
        result = run_cli(train_args(run), cwd=tmp_path)
        assert_disk_full(result, run, "epoch-2.safetensors")
        checkpoints = check_run_folder(run)
        assert sorted(checkpoints) == ["best.safetensors", "epoch-1.safetensors", "last.safetensors"]
        assert checkpoints["last.safetensors"].metadata["epoch"] == 1
        subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(disk)], check=True)
        assert_resumes_to_reference(run, tmp_path, reference)


def test_folder_turned_read_only_during_the_run_exits_6_then_resumes(tmp_path: Path, tmp_path_factory) -> None:
    """Permissions lost mid-run (as root, chmod does not bind: the tmpfs is remounted
    read-only once epoch 1 is saved): exit 6 naming the file, earlier files whole."""
    reference = tiny_reference(tmp_path_factory)
    with mounted_tmpfs(tmp_path / "disk", "size=64m") as disk:
        run = disk / "run"
        args = train_args(run)
        proc = start_cli(args, cwd=tmp_path)
        assert wait_for_file(proc, run / "epoch-1.safetensors"), finish(proc, args).explain()
        for _ in range(500):  # EBUSY while a file is open for writing: retry until between writes
            if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.002)
        else:
            pytest.fail("could not remount the tmpfs read-only")
        result = finish(proc, args)
        assert result.returncode == 6, result.explain()
        assert len(result.errors) == 1 and result.only_errors_on_stderr, result.explain()
        assert result.errors[0].startswith(f"error: cannot write {run}/"), result.explain()
        assert result.errors[0].endswith(f": {os.strerror(errno.EROFS)}"), result.explain()
        assert temp_files(run) == []
        assert "epoch-1.safetensors" in check_run_folder(run)
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert_resumes_to_reference(run, tmp_path, reference)


# --------------------------------------------------------------------------- unusable output folder


def assert_refused_before_training(result, fragment: str) -> None:
    assert result.returncode == 2, result.explain()
    assert len(result.errors) == 1 and fragment in result.errors[0], result.explain()
    assert "epoch" not in result.stdout and "new run" not in result.stdout


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.write_bytes(b"precious")
    result = run_cli(train_args(target), cwd=tmp_path)
    assert_refused_before_training(result, f"output.dir: {target} exists and is not a folder")
    assert target.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["run"]


def test_output_dir_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"precious")
    result = run_cli(train_args(blocker / "sub" / "run"), cwd=tmp_path)
    assert_refused_before_training(result, f"output.dir: {blocker / 'sub' / 'run'} is not writable")
    assert blocker.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["file"]


def test_output_dir_on_a_read_only_folder(tmp_path: Path) -> None:
    """chmod 555 where that binds (not root); as root, where chmod does not stop writes, a
    read-only tmpfs mount instead."""
    if os.geteuid() != 0:
        parent = tmp_path / "locked"
        parent.mkdir()
        parent.chmod(0o555)
        try:
            result = run_cli(train_args(parent / "run"), cwd=tmp_path)
        finally:
            parent.chmod(0o755)
        assert_refused_before_training(result, f"output.dir: {parent / 'run'} is not writable")
        assert os.listdir(parent) == []
        return
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as parent:
        result = run_cli(train_args(parent / "run"), cwd=tmp_path)
        assert_refused_before_training(result, f"output.dir: {parent / 'run'} is not writable")
        assert os.listdir(parent) == []
