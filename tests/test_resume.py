"""Exact resume through the real CLI: stopping (signals, crashes, NaN) and continuing.

One uninterrupted reference run of configs/tiny.yaml (4 epochs) is compared bit for bit with
runs that were stopped and resumed: model weights (state_dict arrays), optimizer momentum
buffers, and every metrics.csv column except the wall-clock ones (images_per_s, seconds).
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_popen, run_cli_subprocess

from autotrain.io.checkpoint import load_checkpoint

TINY = ROOT / "configs" / "tiny.yaml"
EPOCHS = 4
TIMING_COLUMNS = {"images_per_s", "seconds"}


def train_args(out: Path, *extra: str, epochs: int = EPOCHS, quiet: bool = True) -> list[str]:
    return ["train", str(TINY), "--set", f"output.dir={out}", "--set", f"train.epochs={epochs}",
            *(["-q"] if quiet else []), *extra]


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def file_hashes(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert list(a) == list(b), f"{what}: different tensor names"
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, f"{what}: {name}"
        assert a[name].tobytes() == b[name].tobytes(), f"{what}: {name} differs (max abs diff " \
            f"{np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)))})"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Final weights, optimizer state, history and metrics.csv equal the reference run's."""
    got, ref = load_checkpoint(run_dir / "last.safetensors"), load_checkpoint(reference / "last.safetensors")
    assert_same_arrays(got.model_state, ref.model_state, "model weights")
    assert_same_arrays(got.optimizer_state, ref.optimizer_state, "optimizer state")
    assert got.metadata["position"] == ref.metadata["position"]
    assert got.metadata["finished"] is True
    assert metrics(run_dir) == metrics(reference)
    assert len(metrics(run_dir)) == EPOCHS


def wait_for(condition, proc, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"autotrain exited {proc.returncode} before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 4-epoch run (keep_last 2: epoch-3, epoch-4, last, best)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = run_cli_subprocess(*train_args(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def steps_per_epoch(reference) -> int:
    meta = load_checkpoint(reference / "last.safetensors").metadata
    assert meta["position"]["step"] % EPOCHS == 0
    return meta["position"]["step"] // EPOCHS


def copy_run(reference: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(reference, dst)
    return dst


# --------------------------------------------------------------------------- equality


def test_reference_run_is_reproducible(reference, tmp_path):
    """Two fresh runs of one config are identical: the precondition of every resume check."""
    out = tmp_path / "again"
    r = run_cli_subprocess(*train_args(out))
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference)


def test_two_epochs_sigterm_then_resume_two_more_equals_four(reference, steps_per_epoch, tmp_path):
    """Stop at the end of epoch 2 with SIGTERM (exit 143), resume --resume auto for epochs 3-4."""
    out = tmp_path / "run"
    # Every atomic write pauses 0.2 s half-way, so the signal lands in the end-of-epoch-2 writes.
    proc = cli_popen(*train_args(out), env={"AUTOTRAIN_FAULT_WRITE_SLEEP": "0.2"})
    metrics_file = out / "metrics.csv"
    wait_for(lambda: metrics_file.exists() and len(metrics_file.read_text().splitlines()) == 3, proc,
             what="epoch 2's metrics row")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "signal 15" in err and str(out / "last.safetensors") in err
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["position"] == {"epoch": 2, "batch": 0, "step": 2 * steps_per_epoch}
    assert meta["finished"] is False
    assert len(metrics(out)) == 2

    r = run_cli_subprocess(*train_args(out, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference)
    # The periodic checkpoints of epochs 3 and 4 equal the reference's too.
    for name in ("epoch-3.safetensors", "epoch-4.safetensors", "best.safetensors"):
        assert_same_arrays(load_checkpoint(out / name).model_state,
                           load_checkpoint(reference / name).model_state, name)


def test_sigint_mid_epoch_checkpoints_the_step_and_resume_equals(reference, tmp_path):
    """Ctrl-C while the run starts: the first step finishes, is checkpointed, exit 130."""
    out = tmp_path / "run"
    proc = cli_popen(*train_args(out), env={"AUTOTRAIN_FAULT_WRITE_SLEEP": "0.2"})
    # config.yaml is the first file written, with the signal handlers already in place.
    wait_for(lambda: out.is_dir() and any(out.glob(".config.yaml.tmp-*")), proc, what="config.yaml write")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "signal 2" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "last.safetensors"]
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["position"] == {"epoch": 0, "batch": 1, "step": 1}
    assert meta["epoch_sums"]["seen"] == 32  # one batch of tiny.yaml's batch_size

    r = run_cli_subprocess(*train_args(out, "--resume", str(out / "last.safetensors")))
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference)


def test_sigterm_during_a_step_in_epoch_two_resume_equals(reference, steps_per_epoch, tmp_path):
    """SIGTERM during training of epoch 2 (the process signals itself inside its third step of
    epoch 2, by the fault hook, so the moment is chosen, not raced): a mid-epoch checkpoint at
    that step, and a resume that ends as the uninterrupted run."""
    from fault_helpers import run_cli as run_with_faults

    out = tmp_path / "run"
    step = steps_per_epoch + 3
    result = run_with_faults(train_args(out), cwd=tmp_path, faults={"signal_at_step": [signal.SIGTERM, step]})
    assert result.returncode == 143, result.explain()
    assert result.errors == [f"error: interrupted by signal 15; checkpoint {out / 'last.safetensors'}"]
    pos = load_checkpoint(out / "last.safetensors").metadata["position"]
    assert pos == {"epoch": 1, "batch": 3, "step": step}  # 0-based epoch 1 is epoch two
    assert len(metrics(out)) == 1  # only the completed epoch one has a row

    r = run_cli_subprocess(*train_args(out, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference)


# --------------------------------------------------------------------------- --resume auto


def test_resume_auto_takes_the_newest_valid_checkpoint(reference, steps_per_epoch, tmp_path):
    out = copy_run(reference, tmp_path)
    data = bytearray((out / "last.safetensors").read_bytes())
    data[-1] ^= 0xFF  # a payload byte: the header (and its step) still reads, the hash fails
    (out / "last.safetensors").write_bytes(bytes(data))
    epoch4 = out / "epoch-4.safetensors"
    epoch4.write_bytes(epoch4.read_bytes()[: epoch4.stat().st_size // 2])  # torn
    (out / "metrics.csv").write_text("damaged\n")
    r = run_cli_subprocess(*train_args(out, "--resume", "auto", quiet=False))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {out / 'epoch-3.safetensors'} at epoch 4" in r.stdout
    assert_same_run(out, reference)


def test_resume_auto_without_checkpoint_starts_fresh_with_one_line(reference, tmp_path):
    out = tmp_path / "run"
    r = run_cli_subprocess(*train_args(out, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stdout.splitlines() if "no valid checkpoint" in line]
    assert said == [f"no valid checkpoint in {out}: starting fresh"]
    assert_same_run(out, reference)


def test_resume_auto_on_a_finished_run_says_so_and_changes_nothing(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    before = file_hashes(out)
    r = run_cli_subprocess(*train_args(out, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert "already finished" in r.stdout
    assert f"({EPOCHS} epochs)" in r.stdout
    assert file_hashes(out) == before


def test_resume_auto_finished_run_names_the_epochs_it_ran(reference, tmp_path):
    """A finished 4-epoch run resumed with train.epochs=6 still reports the 4 it ran."""
    out = copy_run(reference, tmp_path)
    r = run_cli_subprocess(*train_args(out, "--resume", "auto", epochs=6))
    assert r.returncode == 0, r.stderr
    assert "already finished (4 epochs)" in " ".join(r.stdout.split())


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("how", ["missing", "garbage", "flipped"])
def test_resume_from_a_missing_or_corrupt_file_exits_3(reference, tmp_path, how):
    bad = tmp_path / "bad.safetensors"
    if how == "garbage":
        bad.write_bytes(b"not a checkpoint at all")
    elif how == "flipped":
        data = bytearray((reference / "epoch-3.safetensors").read_bytes())
        data[len(data) - 100] ^= 0x01
        bad.write_bytes(bytes(data))
    out = tmp_path / "new"
    r = run_cli_subprocess(*train_args(out, "--resume", str(bad)))
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], r.stderr
    if how == "flipped":
        assert "corrupt" in lines[0]
    assert not out.exists()


def test_resume_with_a_different_model_or_data_config_exits_2(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    before = file_hashes(out)
    r = run_cli_subprocess(*train_args(out, "--resume", str(out / "last.safetensors"),
                                       "--set", "model.width=8", "--set", "data.val_fraction=0.3",
                                       "--set", "optimizer.lr=0.01"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "model.width" in lines[0] and "data.val_fraction" in lines[0]
    assert "optimizer.lr" not in lines[0]  # only model/data make a checkpoint unusable
    r = run_cli_subprocess(*train_args(out, "--resume", "auto", "--set", "data.image_size=10"))
    assert r.returncode == 2, r.stderr
    assert "data.image_size" in r.stderr and "model." not in r.stderr
    # The seed decides the train/validation split: another seed would train on validation images.
    r = run_cli_subprocess(*train_args(out, "--resume", "auto", "--set", "seed=1"))
    assert r.returncode == 2, r.stderr
    assert "differs in seed;" in r.stderr
    # The batch size gives the saved batch position and global step their meaning.
    r = run_cli_subprocess(*train_args(out, "--resume", "auto", "--set", "train.batch_size=7"))
    assert r.returncode == 2, r.stderr
    assert "differs in train.batch_size;" in r.stderr
    assert file_hashes(out) == before


def test_existing_run_needs_resume_or_overwrite(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    before = file_hashes(out)
    r = run_cli_subprocess(*train_args(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "output.dir" in lines[0] and str(out) in lines[0]
    assert "--resume" in lines[0] and "--overwrite" in lines[0]
    assert file_hashes(out) == before

    r = run_cli_subprocess(*train_args(out, "--overwrite", epochs=1))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors", "config.yaml", "epoch-1.safetensors", "last.safetensors", "metrics.csv"]
    assert [row["epoch"] for row in metrics(out)] == ["1"]
    assert "epochs: 1\n" in (out / "config.yaml").read_text()
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["finished"] is True and meta["position"]["epoch"] == 1


# --------------------------------------------------------------------------- NaN


def _nonfinite_files(run_dir: Path) -> list[str]:
    bad = []
    for p in run_dir.glob("*.safetensors"):
        ckpt = load_checkpoint(p)
        for name, a in {**ckpt.model_state, **ckpt.optimizer_state}.items():
            if not np.all(np.isfinite(a)):
                bad.append(f"{p.name}:{name}")
    return bad


def test_nan_loss_on_a_fresh_run_exits_5_naming_epoch_and_step(tmp_path):
    out = tmp_path / "run"
    r = run_cli_subprocess(*train_args(out, "--set", "optimizer.lr=1e6"))
    assert r.returncode == 5, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.search(r"loss is (nan|inf|-inf) at epoch 1, step \d+", lines[0]), lines[0]
    assert list(out.glob("*.safetensors")) == []


def test_nan_after_resume_keeps_the_previous_checkpoint_byte_identical(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(reference / "epoch-3.safetensors", out / "last.safetensors")
    before = (out / "last.safetensors").read_bytes()
    r = run_cli_subprocess(*train_args(out, "--resume", "auto", "--set", "optimizer.lr=1e6"))
    assert r.returncode == 5, r.stderr
    m = re.search(r"at epoch (\d+), step (\d+)", r.stderr)
    assert m and m.group(1) == "4", r.stderr
    assert (out / "last.safetensors").read_bytes() == before
    assert not (out / "epoch-4.safetensors").exists()
    # Nothing of epoch 4 was saved (a best.safetensors may be repaired from epoch 3's checkpoint).
    saved = load_checkpoint(out / "last.safetensors").metadata["step"]
    assert all(load_checkpoint(p).metadata["step"] <= saved for p in out.glob("*.safetensors"))
    assert _nonfinite_files(out) == []


def test_weights_that_evaluate_to_nan_stop_the_run_with_exit_5(tmp_path):
    """lr=1e38 on one step per epoch: the loss of that step is finite, the update makes the
    weights huge (finite); validation then sees a NaN loss. That is a numerical failure."""
    out = tmp_path / "run"
    r = run_cli_subprocess(*train_args(out, "--set", "optimizer.lr=1e38", "--set", "train.batch_size=4096",
                                       epochs=1))
    assert r.returncode == 5, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "epoch 1" in lines[0], r.stderr
    assert list(out.glob("*.safetensors")) == []


def test_mid_epoch_resume_with_augmentation_and_unfreezing_equals(tmp_path):
    """Random crops and flips, a frozen backbone thawed at epoch 2 (0-based 1): SIGTERM in
    epoch 2, after the thaw, resumes to the same weights and momentum as an uninterrupted run."""
    extra = ["--set", "data.augment.crop_padding=2", "--set", "data.augment.hflip=true",
             "--set", "finetune.freeze_backbone=true", "--set", "finetune.unfreeze_at_epoch=1"]
    ref = tmp_path / "ref"
    r = run_cli_subprocess(*train_args(ref, *extra, epochs=3))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    proc = cli_popen(*train_args(out, *extra, epochs=3))
    wait_for(lambda: (out / "epoch-1.safetensors").exists(), proc, what="epoch 1's checkpoint")
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["position"]["batch"] > 0 and meta["unfrozen"] is True, meta["position"]
    r = run_cli_subprocess(*train_args(out, *extra, "--resume", "auto", epochs=3))
    assert r.returncode == 0, r.stderr
    got, want = load_checkpoint(out / "last.safetensors"), load_checkpoint(ref / "last.safetensors")
    assert_same_arrays(got.model_state, want.model_state, "model weights")
    assert_same_arrays(got.optimizer_state, want.optimizer_state, "optimizer state")
    assert metrics(out) == metrics(ref)


def test_resume_with_other_freeze_settings_exits_2(reference, tmp_path):
    # What is frozen decides which parameters the saved momentum buffers belong to.
    out = copy_run(reference, tmp_path)
    before = file_hashes(out)
    r = run_cli_subprocess(*train_args(out, "--resume", str(out / "epoch-3.safetensors"),
                                       "--set", "finetune.freeze_backbone=true"))
    assert r.returncode == 2, r.stderr
    assert "finetune.freeze_backbone" in r.stderr
    assert file_hashes(out) == before


def test_resume_takes_optimizer_hyper_parameters_from_the_config(reference, tmp_path):
    # The config (and config.yaml, and new checkpoints) say momentum 0.5: the optimizer must use it.
    out = copy_run(reference, tmp_path)
    r = run_cli_subprocess(*train_args(out, "--resume", str(out / "epoch-3.safetensors"),
                                       "--set", "optimizer.momentum=0.5"))
    assert r.returncode == 0, r.stderr
    groups = load_checkpoint(out / "last.safetensors").metadata["optimizer_groups"]
    assert [g["momentum"] for g in groups] == [0.5]
    ref = load_checkpoint(reference / "last.safetensors").model_state
    got = load_checkpoint(out / "last.safetensors").model_state
    assert any(not np.array_equal(got[k], ref[k]) for k in ref)  # the last epoch really changed
