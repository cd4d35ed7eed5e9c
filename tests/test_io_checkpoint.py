"""Checkpoints: round trip with hash, atomic and durable writes, crashes, rotation, resume."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import autotrain.io.checkpoint as ckpt
from autotrain.errors import OutputError, WeightsError
from autotrain.io import (
    atomic_write_bytes,
    clean_stale_temp_files,
    epoch_checkpoint_name,
    find_latest_valid_checkpoint,
    load_checkpoint,
    rotate_checkpoints,
    safetensors_bytes,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


def model_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn1.running_mean": rng.standard_normal(4).astype(np.float32),
        "bn1.num_batches_tracked": np.array(seed, dtype=np.int64),
        "fc.weight": rng.standard_normal((10, 4)).astype(np.float32),
    }


def optimizer_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return {"momentum_buffer.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)}


def metadata(step: int = 10, epoch: int = 1) -> dict:
    rng = np.random.default_rng(3)
    return {
        "config": {"model": {"width": 8}, "optim": {"lr": 0.1}},
        "epoch": epoch,
        "step": step,
        "schedule": {"last_epoch": epoch},
        "normalisation": {"mean": [0.5], "std": [0.25]},
        "class_names": ["zero", "one"],
        "rng_state": rng.bit_generator.state,  # 128-bit ints survive JSON
        "mt_state": np.random.RandomState(0).get_state()[1][:4],  # a numpy array -> list
        "version": "0.1.0",
        "metrics": {"val_acc": np.float32(0.5), "loss": float("nan")},
    }


def test_round_trip_with_metadata_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    digest = save_checkpoint(path, model_state(), optimizer_state(), metadata())
    loaded = load_checkpoint(path)
    assert loaded.sha256 == digest and len(digest) == 64
    assert list(loaded.model_state) and set(loaded.model_state) == set(model_state())
    for name, array in model_state().items():
        assert loaded.model_state[name].dtype == array.dtype and loaded.model_state[name].shape == array.shape
        np.testing.assert_array_equal(loaded.model_state[name], array)
    buffer = "momentum_buffer.conv1.weight"
    np.testing.assert_array_equal(loaded.optimizer_state[buffer], optimizer_state()[buffer])
    meta = loaded.metadata
    assert meta["config"] == {"model": {"width": 8}, "optim": {"lr": 0.1}}
    assert meta["epoch"] == 1 and meta["step"] == 10 and meta["class_names"] == ["zero", "one"]
    restored = np.random.default_rng()
    restored.bit_generator.state = meta["rng_state"]
    assert restored.random() == np.random.default_rng(3).random()
    assert meta["mt_state"] == [int(v) for v in np.random.RandomState(0).get_state()[1][:4]]
    assert meta["metrics"]["val_acc"] == 0.5 and np.isnan(meta["metrics"]["loss"])
    assert "sha256" not in meta and "format" not in meta


def test_reserved_names_are_caller_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.safetensors", model_state(), {}, {"sha256": "x"})
    with pytest.raises(ValueError, match="reserved prefix"):
        save_checkpoint(tmp_path / "c.safetensors", {"optimizer.x": np.zeros(1)}, {}, {})


def _flip(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_payload_byte_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model_state(), optimizer_state(), metadata())
    _flip(path, path.stat().st_size - 5)
    with pytest.raises(WeightsError, match="checkpoint is corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_an_edited_metadata_value_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model_state(), {}, {"epoch": 3, "step": 30})
    data = path.read_bytes()
    assert data.count(b'"epoch":"3"') == 1
    path.write_bytes(data.replace(b'"epoch":"3"', b'"epoch":"7"'))
    with pytest.raises(WeightsError, match="checkpoint is corrupt"):
        load_checkpoint(path)


def test_missing_foreign_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(safetensors_bytes(model_state()))
    with pytest.raises(WeightsError, match="not an autotrain checkpoint"):
        load_checkpoint(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(WeightsError) as info:
        load_checkpoint(garbage)
    assert str(info.value) == (f"{garbage}: not a safetensors file: 3 bytes, shorter than the "
                               "8-byte header length")


# ----------------------------------------------------------------------------- atomic write


class RecordingFile:
    """Wraps a real file and records write/flush, optionally failing a write."""

    def __init__(self, real, calls: list, fail_with: int | None = None) -> None:
        self.real, self.calls, self.fail_with = real, calls, fail_with

    def write(self, data) -> int:
        self.calls.append(("write", len(data)))
        if self.fail_with is not None:
            self.real.write(bytes(data)[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(self.fail_with, os.strerror(self.fail_with))
        return self.real.write(data)

    def flush(self) -> None:
        self.calls.append(("flush",))
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


def record_io(monkeypatch, calls: list, fail_with: int | None = None) -> None:
    real_fsync, real_replace = os.fsync, os.replace

    def fake_open(path, mode="r"):
        calls.append(("open", Path(path).name))
        return RecordingFile(open(path, mode), calls, fail_with)

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(("fsync", kind))
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("replace", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)  # module global shadows builtins.open
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)


def test_write_order_is_write_flush_fsync_replace_fsync_dir(tmp_path: Path, monkeypatch) -> None:
    calls: list = []
    record_io(monkeypatch, calls)
    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, b"payload")
    temp = f".last.safetensors.tmp-{os.getpid()}"
    assert calls == [
        ("open", temp),
        ("write", 7),
        ("flush",),
        ("fsync", "file"),
        ("replace", temp, "last.safetensors"),
        ("fsync", "dir"),
    ]
    assert not temp.endswith(".safetensors")
    assert target.read_bytes() == b"payload" and sorted(os.listdir(tmp_path)) == ["last.safetensors"]


def test_enospc_keeps_the_old_file_and_removes_the_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model_state(1), {}, {"step": 1})
    calls: list = []
    record_io(monkeypatch, calls, fail_with=errno.ENOSPC)
    with pytest.raises(OutputError) as info:
        save_checkpoint(path, model_state(2), {}, {"step": 2})
    message = str(info.value)
    assert str(path) in message and os.strerror(errno.ENOSPC) in message and "\n" not in message
    assert not any(c[0] == "replace" for c in calls)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.safetensors"]
    assert load_checkpoint(path).metadata["step"] == 1


def test_fsync_failure_is_an_output_error_too(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match="w.bin"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.bin"]


def test_unwritable_destination(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="missing"):
        atomic_write_bytes(tmp_path / "missing" / "last.safetensors", b"x")


def _writer(path: Path, env: dict[str, str]) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import numpy as np
        from autotrain.io import save_checkpoint
        state = {{"w": np.full(1 << 18, 2.0, dtype=np.float32)}}
        save_checkpoint({str(path)!r}, state, {{}}, {{"step": 2}})
        """
    )
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", script], env=full_env, cwd=REPO)


def test_kill_9_mid_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": np.ones(4, np.float32)}, {}, {"step": 1})
    proc = _writer(path, {ckpt.FAULT_SLEEP_ENV: "30"})
    temp = tmp_path / f".last.safetensors.tmp-{proc.pid}"
    try:
        deadline = time.monotonic() + 20
        while not (temp.exists() and temp.stat().st_size > 0) and time.monotonic() < deadline:
            assert proc.poll() is None, "the writer exited before it was killed"
            time.sleep(0.02)
        assert temp.exists() and temp.stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    loaded = load_checkpoint(path)
    assert loaded.metadata["step"] == 1
    np.testing.assert_array_equal(loaded.model_state["w"], np.ones(4, np.float32))
    assert find_latest_valid_checkpoint(tmp_path) == path
    assert clean_stale_temp_files(tmp_path) == [temp]
    assert os.listdir(tmp_path) == ["last.safetensors"]


def test_abort_hook_exits_99_and_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": np.ones(4, np.float32)}, {}, {"step": 1})
    proc = _writer(path, {ckpt.FAULT_ABORT_ENV: "1"})
    assert proc.wait(timeout=30) == 99
    assert load_checkpoint(path).metadata["step"] == 1


# ----------------------------------------------------------------------------- run folder


def test_rotation_keeps_the_two_newest_epochs(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best.safetensors", model_state(), {}, {"step": 0})
    for epoch in range(1, 11):
        save_checkpoint(tmp_path / epoch_checkpoint_name(epoch), model_state(epoch), {}, {"step": epoch, "epoch": epoch})
        save_checkpoint(tmp_path / "last.safetensors", model_state(epoch), {}, {"step": epoch, "epoch": epoch})
        rotate_checkpoints(tmp_path, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == [
        "best.safetensors",
        "epoch-10.safetensors",
        "epoch-9.safetensors",
        "last.safetensors",
    ]
    assert rotate_checkpoints(tmp_path, keep_last=0) == [tmp_path / "epoch-9.safetensors", tmp_path / "epoch-10.safetensors"]
    with pytest.raises(ValueError):
        rotate_checkpoints(tmp_path, keep_last=-1)


def test_find_latest_valid_skips_corrupt_and_stepless_files(tmp_path: Path) -> None:
    assert find_latest_valid_checkpoint(tmp_path) is None
    assert find_latest_valid_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path / "epoch-1.safetensors", model_state(), {}, {"step": 10})
    save_checkpoint(tmp_path / "epoch-2.safetensors", model_state(), {}, {"step": 20})
    save_checkpoint(tmp_path / "last.safetensors", model_state(), {}, {"step": 25})
    save_checkpoint(tmp_path / "best.safetensors", model_state(), {}, {"step": 99})  # never a resume point
    save_checkpoint(tmp_path / "epoch-3.safetensors", model_state(), {}, {"epoch": 3})  # no step
    assert find_latest_valid_checkpoint(tmp_path) == tmp_path / "last.safetensors"
    _flip(tmp_path / "last.safetensors", (tmp_path / "last.safetensors").stat().st_size - 1)
    assert find_latest_valid_checkpoint(tmp_path) == tmp_path / "epoch-2.safetensors"
    (tmp_path / "epoch-2.safetensors").write_bytes(b"\xff" * 16)
    assert find_latest_valid_checkpoint(tmp_path) == tmp_path / "epoch-1.safetensors"


def test_last_wins_a_tie_in_step(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "epoch-2.safetensors", model_state(), {}, {"step": 20})
    save_checkpoint(tmp_path / "last.safetensors", model_state(), {}, {"step": 20})
    assert find_latest_valid_checkpoint(tmp_path) == tmp_path / "last.safetensors"


def test_clean_stale_temp_files(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.safetensors.tmp-{dead.pid}"
    own = tmp_path / f".epoch-3.safetensors.tmp-{os.getpid()}"
    live = tmp_path / f".best.safetensors.tmp-{os.getppid()}"
    keep = [tmp_path / "last.safetensors", tmp_path / ".hidden", tmp_path / "notes.tmp-12"]
    for path in [stale, own, live, *keep]:
        path.write_bytes(b"x")
    assert sorted(clean_stale_temp_files(tmp_path)) == sorted([stale, own])
    assert sorted(tmp_path.iterdir()) == sorted([live, *keep])
    assert clean_stale_temp_files(tmp_path / "missing") == []
