"""Broken datasets and a diverging run through ``autotrain train``/``finetune``.

Data errors exit 4 at load, before anything is written, with one line naming the file or
folder; files that merely do not decode inside an otherwise usable imagefolder are skipped and
named (the run goes on), RGBA and 16-bit PNGs are converted. Divergence exits 5 with one line
naming the step, and the last good checkpoint stays byte-identical (a write log records the
sha256 of every completed write). tests/test_cli_train.py covers the IDX magic/truncation/label
and npz structure cases; these are the others.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import (
    ROOT,
    TINY,
    check_run_folder,
    read_write_log,
    run_forked,
    sha256,
    temp_files,
    tree,
)
from PIL import Image

IMAGEFOLDER = ROOT / "configs" / "imagefolder.yaml"
SMALL = ["model.width=4", "data.image_size=8", "train.epochs=1", "schedule.warmup_epochs=0", "train.batch_size=16"]


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def good_images(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        png(folder / f"{i:03d}.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))


def truncated_png(path: Path) -> Path:
    png(path, np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-60])
    return path


def imagefolder_args(root: Path, classes: int = 2, *extra: str) -> list[str]:
    args = ["train", str(IMAGEFOLDER), "--set", f"data.path={root}", "--set", f"model.num_classes={classes}",
            "--set", "output.dir=run"]
    for s in SMALL:
        args += ["--set", s]
    return [*args, *extra]


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
                     + array.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------- the cases

def case_imagefolder_empty(root: Path):
    (root / "images").mkdir()
    return imagefolder_args(root / "images"), 4, [f"{root / 'images'}: no class folders"]


def case_imagefolder_only_hidden(root: Path):
    good_images(root / "images" / ".cache", 4, 0)
    return imagefolder_args(root / "images"), 4, [f"{root / 'images'}: no class folders"]


def case_class_of_broken_files(root: Path):
    good_images(root / "images" / "cat", 6, 0)
    broken = root / "images" / "dog"
    broken.mkdir(parents=True)
    (broken / "empty.png").write_bytes(b"")
    (broken / "text.png").write_text("I am not a picture\n")
    truncated_png(broken / "cut.png")
    return imagefolder_args(root / "images"), 4, [f"{broken}: class folder 'dog' has no image that decodes",
                                                  "3 files skipped"]


def case_imagefolder_mixed(root: Path):
    """Hidden folders and files ignored; 0-byte, text and truncated .png skipped and named;
    RGBA and 16-bit PNGs converted: 2 classes, exit 0."""
    images = root / "images"
    good_images(images / "cat", 8, 0)
    good_images(images / "dog", 8, 1)
    good_images(images / ".hidden_class", 3, 2)
    good_images(images / "cat" / ".thumbs", 3, 3)
    (images / "cat" / "empty.png").write_bytes(b"")
    (images / "dog" / "notes.png").write_text("not an image")
    truncated_png(images / "dog" / "cut.png")
    rng = np.random.default_rng(9)
    png(images / "cat" / "rgba.png", rng.integers(0, 256, (10, 10, 4), dtype=np.uint8), "RGBA")
    png(images / "dog" / "deep.png", rng.integers(0, 65536, (10, 10), dtype=np.uint16).astype(np.uint16))
    return imagefolder_args(images), 0, []


def case_idx_count_mismatch(root: Path):
    folder = root / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((30, 8, 8)), 2051)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(29), 2049)
    args = ["train", str(TINY), "--set", "data.source=idx", "--set", f"data.path={folder}", "--set",
            "data.classes=null", "--set", "output.dir=run"]
    return args, 4, [str(folder / "train-"), "30", "29"]


def npz_args(path: Path) -> list[str]:
    return ["train", str(TINY), "--set", "data.source=npz", "--set", f"data.path={path}", "--set",
            "data.classes=null", "--set", "output.dir=run"]


def case_npz_nan_pixels(root: Path):
    x = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32)
    x[13, 2, 3] = np.nan
    np.savez(root / "data.npz", x=x, y=np.arange(20) % 3)
    return npz_args(root / "data.npz"), 4, [f"{root / 'data.npz'}: array 'x' has 1 NaN/Inf pixel values",
                                            "image 13"]


def case_npz_label_out_of_range(root: Path):
    np.savez(root / "data.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.array([0, 1, 2] * 6 + [3, 0]))
    return npz_args(root / "data.npz"), 4, [f"{root / 'data.npz'}: label 3 is outside [0, 3) (num_classes is 3)"]


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    jobs, expected, before = {}, {}, {}
    for name, make in CASES.items():
        cwd = base / name
        cwd.mkdir()
        args, code, fragments = make(cwd)
        expected[name] = (code, fragments)
        before[name] = tree(cwd)
        jobs[name] = {"args": args, "cwd": cwd}
    # Divergence: lr 1e6 from the first step; and a backbone thawed at epoch 2 with an
    # effective lr of 0.05 * 2e7 = 1e6 after a good epoch 1.
    for name, args in {
        "diverge fresh": ["train", str(TINY), "--set", "output.dir=run", "--set", "optimizer.lr=1e6", "-q"],
        "diverge after a good epoch": ["finetune", str(TINY), "--set", "output.dir=run", "--set",
                                       "train.epochs=3", "--set", "finetune.freeze_backbone=true", "--set",
                                       "finetune.unfreeze_at_epoch=1", "--set", "finetune.backbone_lr_mult=2e7",
                                       "-q"],
    }.items():
        cwd = base / name.replace(" ", "_")
        cwd.mkdir()
        jobs[name] = {"args": args, "cwd": cwd, "faults": {"log_writes": str(cwd / "writes.log")}}
    return run_forked(jobs), {name: job["cwd"] for name, job in jobs.items()}, expected, before


@pytest.mark.parametrize("name", [n for n in CASES if n != "imagefolder_mixed"])
def test_bad_data_exits_4_at_load_naming_the_file(name: str, outcome) -> None:
    results, cwds, expected, before = outcome
    result = results[name]
    code, fragments = expected[name]
    assert result.returncode == code, result.explain()
    assert len(result.errors) == 1 and all(f in result.errors[0] for f in fragments), result.explain()
    assert result.only_errors_on_stderr, result.explain()
    assert tree(cwds[name]) == before[name], "nothing may be written before the data loads"


def test_imagefolder_skips_and_names_undecodable_files_and_converts_the_rest(outcome) -> None:
    results, cwds, _, _ = outcome
    result = results["imagefolder_mixed"]
    assert result.returncode == 0, result.explain()
    info = check_run_folder(cwds["imagefolder_mixed"] / "run")["last.safetensors"].metadata
    assert info["class_names"] == ["cat", "dog"]  # .hidden_class ignored
    skipped = sorted(Path(s["path"]).name for s in info["data_info"]["skipped_files"])
    assert skipped == ["cut.png", "empty.png", "notes.png"]  # .thumbs ignored; rgba and 16-bit decoded
    assert info["data_info"]["num_train"] + info["data_info"]["num_val"] == 16 + 2
    assert "skipped 3 undecodable file(s), first " in result.stdout


def test_divergence_from_the_first_steps_exits_5_and_writes_no_checkpoint(outcome) -> None:
    results, cwds, _, _ = outcome
    result = results["diverge fresh"]
    assert result.returncode == 5, result.explain()
    assert len(result.errors) == 1 and "loss is nan at epoch 1, step" in result.errors[0], result.explain()
    assert "optimizer.lr" in result.errors[0] and result.only_errors_on_stderr, result.explain()
    run = cwds["diverge fresh"] / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_divergence_keeps_the_last_good_checkpoint_byte_identical(outcome) -> None:
    results, cwds, _, _ = outcome
    result = results["diverge after a good epoch"]
    assert result.returncode == 5, result.explain()
    assert len(result.errors) == 1 and "at epoch 2, step" in result.errors[0], result.explain()
    assert result.only_errors_on_stderr, result.explain()
    cwd = cwds["diverge after a good epoch"]
    run = cwd / "run"
    assert temp_files(run) == []
    checkpoints = check_run_folder(run)
    assert sorted(checkpoints) == ["best.safetensors", "epoch-1.safetensors", "last.safetensors"]
    assert checkpoints["last.safetensors"].metadata["epoch"] == 1
    for name, array in checkpoints["last.safetensors"].model_state.items():
        assert array.dtype.kind != "f" or np.isfinite(array).all(), name
    last_written = {Path(p).name: digest for p, digest in read_write_log(cwd / "writes.log")}
    for name in checkpoints:
        assert sha256(run / name) == last_written[name], f"{name} changed after its last write"
