"""The shipped pretrained backbone and the few-label task it is finetuned on (issue 12).

- weights/resnet18_fashion04.safetensors loads into the finetune config's model, every tensor,
  and has the SHA-256 that weights/README.md states;
- datasets/fashion_5to9 is the few-label task README describes (20 images per class, 2,000
  held-out validation images, its licence notice);
- the default ``autotrain finetune --freeze-backbone`` runs from an unrelated folder after a
  NON-editable install (the package data is found, not the checkout);
- (slow) seed 0 of benchmarks/finetune_comparison.py's frozen setting: the pretrained backbone
  beats a random one by the measured margin less a safety gap.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, PINNED_THREADS, ROOT, run_cli_subprocess

import autotrain as at
from autotrain.config import load_config
from autotrain.data.idx import read_idx_folder
from autotrain.io import load_weights, read_safetensors
from autotrain.resources import resolve_data_path, shipped_file, shipped_folder
from autotrain.train.run import load_data
from autotrain.train.setup import build_model

WEIGHTS_NAME = "resnet18_fashion04.safetensors"
SHIPPED = ROOT / "weights" / WEIGHTS_NAME
DATASET = ROOT / "datasets" / "fashion_5to9"
FINETUNE = ROOT / "configs" / "finetune.yaml"
PRETRAIN = ROOT / "configs" / "fashion_pretrain.yaml"
PRETRAIN_VAL_CORRECT = 4429  # weights/README.md: 0.8858 of the 5,000 t10k images of classes 0-4


def best_val_acc(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        return max(float(row["val_acc"]) for row in csv.DictReader(f) if row["val_acc"])


# --------------------------------------------------------------------------- the weights file


def test_the_shipped_weights_have_the_readme_sha256_and_load_completely() -> None:
    readme = (ROOT / "weights" / "README.md").read_text()
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    section = readme.split(f"## {WEIGHTS_NAME}", 1)[1].split("\n## ", 1)[0]
    assert re.search(rf"SHA-256 \| `{digest}`", section), f"weights/README.md does not state {digest}"
    tensors, meta = read_safetensors(SHIPPED)
    assert meta == {} and not any(k.startswith("optimizer.") for k in tensors)  # a bare state_dict
    pre = load_config(PRETRAIN)
    m = pre.model
    model = at.models.resnet18(num_classes=m.num_classes, in_channels=m.in_channels, width=m.width, stem=m.stem)
    model.load_state_dict(load_weights(SHIPPED), strict=True)  # every key, every shape
    # the default finetune config loads it by its shipped name: all 122 tensors, fc replaced
    cfg = load_config(FINETUNE)
    assert cfg.model.weights == f"weights/{WEIGHTS_NAME}" and shipped_file(cfg.model.weights) is not None
    setup = build_model(cfg, FINETUNE.parent)
    assert setup.load_report.complete and len(setup.load_report.loaded) == len(tensors) == 122
    assert f"autotrain convert runs/fashion_pretrain/best.safetensors weights/{WEIGHTS_NAME}" in readme


def fashion_mnist() -> Path:
    """The full Fashion-MNIST IDX folder of the Debian package (what the backbone was pretrained
    on). Outside CI a missing one skips; in CI it fails: .ci/run installs dataset-fashion-mnist."""
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: {folder} is missing; .ci/run must apt-get install dataset-fashion-mnist",
                        pytrace=False)
        pytest.skip(f"{folder} is missing (apt-get install dataset-fashion-mnist)")
    return folder


def test_the_backbone_knows_the_classes_it_was_pretrained_on() -> None:
    """The shipped weights, head included, on the 5,000 t10k images of Fashion-MNIST 0-4 (the
    pretraining's validation split): weights/README.md's accuracy, to the image."""
    from autotrain.train.loop import evaluate
    from autotrain.train.run import make_loaders

    cfg = load_config(PRETRAIN, [f"data.path={fashion_mnist()}", f"model.weights={SHIPPED}",
                                 "finetune.replace_head=false"])
    setup = build_model(cfg)
    _, val = make_loaders(cfg, load_data(cfg))
    assert round(evaluate(setup.model, val).accuracy * 5000) == PRETRAIN_VAL_CORRECT


def test_pretraining_and_finetuning_configs_fit_together() -> None:
    pre, fine = load_config(PRETRAIN), load_config(FINETUNE)
    assert pre.data.classes == (0, 1, 2, 3, 4) and fine.data.classes == (5, 6, 7, 8, 9)
    assert (pre.model.width, pre.model.stem, pre.model.in_channels) == (fine.model.width, fine.model.stem,
                                                                        fine.model.in_channels)
    assert pre.data.image_size == fine.data.image_size
    # the shipped bn: train differs from the schema's default eval, and README says why (issue 12)
    from autotrain.config.schema import FinetuneConfig
    assert (fine.finetune.bn, FinetuneConfig().bn) == ("train", "eval")
    section = (ROOT / "README.md").read_text().split("## Finetuning", 1)[1].split("\n## ", 1)[0]
    assert "Why the shipped config says `bn: train`" in section


# --------------------------------------------------------------------------- the few-label task


def test_the_shipped_task_has_20_labels_per_class_and_2000_held_out_images() -> None:
    train, val = read_idx_folder(DATASET)
    assert val is not None
    assert np.bincount(train.labels, minlength=10).tolist() == [0] * 5 + [20] * 5
    assert np.bincount(val.labels, minlength=10).tolist() == [0] * 5 + [400] * 5
    assert train.images.shape[1:] == val.images.shape[1:] == (28, 28)
    # no training image is also a validation image
    seen = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in seen for img in val.images)
    licence = (DATASET / "LICENSE.txt").read_text()
    assert "The MIT License (MIT) Copyright © [2017] Zalando SE" in licence
    assert "Permission is hereby granted" in licence


def test_the_default_finetune_config_finds_the_shipped_task_from_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # data.path is relative: found as shipped, not in the cwd
    cfg = load_config(FINETUNE)
    assert cfg.data.path == "datasets/fashion_5to9"
    assert Path(resolve_data_path(cfg.data.path)).samefile(DATASET)
    assert shipped_folder("datasets/fashion_5to9") is not None and shipped_folder("datasets/nothere") is None
    data = load_data(cfg)
    assert (len(data.train_y), len(data.val_y)) == (100, 2000)
    assert data.class_names == ["5", "6", "7", "8", "9"]
    # a path that exists as given wins over the shipped one; a missing one stays as written
    (tmp_path / "datasets" / "fashion_5to9").mkdir(parents=True)
    assert resolve_data_path("datasets/fashion_5to9") == "datasets/fashion_5to9"
    assert resolve_data_path("nowhere/x") == "nowhere/x"


# --------------------------------------------------------------------------- non-editable install


def _copy_source(dest: Path) -> None:
    """What a wheel is built from (an sdist's files), without the checkout's build leftovers."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("autotrain", "configs", "weights", "datasets"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)


def test_the_default_finetune_runs_after_a_non_editable_install(tmp_path) -> None:
    source, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    _copy_source(source)
    elsewhere.mkdir()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert (target / "autotrain" / "_weights" / WEIGHTS_NAME).is_file()
    assert (target / "autotrain" / "_datasets" / "fashion_5to9" / "LICENSE.txt").is_file()
    # the installed copy, not the checkout (the editable finder comes after PYTHONPATH)
    env = dict(os.environ, **PINNED_THREADS, PYTHONPATH=str(target))
    where = subprocess.run([sys.executable, "-c", "import autotrain; print(autotrain.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout
    r = subprocess.run([*CLI, "finetune", "--freeze-backbone", "--set", "train.epochs=1"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    text = " ".join(r.stdout.split())
    assert "runs/finetune: new run; 100 train / 2000 val images, 5 classes" in text
    assert f"{WEIGHTS_NAME}: loaded 122, missing 0, unexpected 0, shape mismatch 0" in text
    assert (elsewhere / "runs" / "finetune" / "best.safetensors").is_file()
    assert 0.2 < best_val_acc(elsewhere / "runs" / "finetune") <= 1.0


# --------------------------------------------------------------------------- the comparison, seed 0


# benchmarks/finetune_comparison.json, frozen setting, seed 0 (validation every 2 epochs):
# pretrained 0.8440, random 0.5905 with the shipped bn: train.
MEASURED_MARGIN = 0.8440 - 0.5905
SAFETY_GAP = 0.05


@pytest.mark.slow
def test_seed_0_of_the_comparison_pretrained_beats_random_by_the_measured_margin(tmp_path) -> None:
    """The shipped frozen-backbone finetune, run to the end (40 epochs), against the same run on
    a random backbone: same seed, so the same head initialisation, batches and augmentation."""
    best = {}
    for name, extra in (("pretrained", []), ("random", ["--set", "model.weights=null"])):
        r = run_cli_subprocess("finetune", "--freeze-backbone", "--set", "train.eval_every=2", *extra,
                               "--set", f"output.dir={tmp_path / name}", "--quiet", cwd=tmp_path, timeout=1200)
        assert r.returncode == 0, r.stdout + r.stderr
        best[name] = best_val_acc(tmp_path / name)
    assert best["pretrained"] >= best["random"] + MEASURED_MARGIN - SAFETY_GAP, best
