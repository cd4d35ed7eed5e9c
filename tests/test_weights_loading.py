"""Pretrained weights into autotrain's resnet18 by name, without torch: torchvision .pth (zip
and legacy), safetensors, .npz and autotrain checkpoints give the same state_dict and torch's
eval logits; unsafe or wrong-architecture files are refused through ``autotrain finetune``;
the shipped backbone is what weights/README.md says.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_popen, run_cli_subprocess

import autotrain as at
from autotrain.config import config_from_yaml_text, load_config
from autotrain.errors import WeightsError
from autotrain.io import (
    convert,
    load_checkpoint,
    load_weights,
    match_state_dict,
    read_safetensors,
)
from autotrain.resources import shipped_file
from autotrain.train.run import Trainer
from autotrain.train.setup import build_model

WEIGHTS = ROOT / "tests" / "fixtures" / "weights"
SHIPPED = ROOT / "weights" / "resnet18_fashion04.safetensors"
W8_FILES = ["resnet18_w8.pth", "resnet18_w8_legacy.pth", "resnet18_w8.safetensors"]
EVIL = sorted(p.name for p in WEIGHTS.glob("evil_*.pth"))
SENTINEL = "PWNED_SENTINEL"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(WEIGHTS / "resnet18_w8_expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


def readme_imagenet_config(*overrides: str):
    """The ImageNet finetune config of README.md's Finetuning section, validated."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(# imagenet_finetune\.yaml.*?)```", text, re.DOTALL).group(1)
    return config_from_yaml_text(block, "README.md", list(overrides))


def eval_logits(model, x: np.ndarray) -> np.ndarray:
    model.eval()
    with at.no_grad():
        return model(at.tensor(x)).data


def assert_close_to(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))
    assert err <= tol, f"max-normalised error {err:.2e}"


def assert_state_is(model, tensors: dict) -> None:
    state = model.state_dict()
    assert list(state) == [k for k in tensors if k in state] and len(state) == len(tensors)
    for k, v in tensors.items():
        assert state[k].dtype == v.dtype and state[k].tobytes() == v.tobytes(), k


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", W8_FILES)
def test_width8_fixtures_load_bit_identically_and_give_torch_logits(name: str, expected) -> None:
    tensors = load_weights(WEIGHTS / name)
    model = at.models.resnet18(num_classes=10, width=8, stem="imagenet")
    report = match_state_dict({k: v.shape for k, v in model.state_dict().items()}, tensors)
    assert report.complete, report.summary()
    model.load_state_dict(tensors, strict=True)
    assert_state_is(model, {k: v for k, v in expected.items() if k not in ("x", "logits")})
    assert_close_to(eval_logits(model, expected["x"]), expected["logits"])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_converted_files_and_the_finetune_set_up_give_the_same_logits(tmp_path: Path, suffix: str, expected) -> None:
    out = tmp_path / f"w{suffix}"
    r = run_cli_subprocess("convert", str(WEIGHTS / "resnet18_w8_legacy.pth"), str(out))
    assert r.returncode == 0 and "122 tensors" in r.stdout, r.stderr
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        "model.num_classes=10", "data.classes=null", "model.in_channels=3", "model.width=8",
        "model.stem=imagenet", f"model.weights={out}", "finetune.replace_head=false"])
    setup = build_model(cfg)
    assert setup.load_report.complete and setup.frozen == []
    assert_close_to(eval_logits(setup.model, expected["x"]), expected["logits"])


def test_a_checkpoint_converts_to_a_bare_state_dict(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output.dir={tmp_path / 'run'}", "train.epochs=1"])
    run = Trainer(cfg).run()
    ckpt = load_checkpoint(run.last_checkpoint)
    assert load_weights(run.last_checkpoint).keys() == ckpt.model_state.keys()
    convert(run.last_checkpoint, tmp_path / "bare.safetensors")
    tensors, meta = read_safetensors(tmp_path / "bare.safetensors")
    assert meta == {} and list(tensors) == list(ckpt.model_state)
    assert all(tensors[k].tobytes() == v.tobytes() for k, v in ckpt.model_state.items())
    # a checkpoint whose hash does not match is refused, as load_checkpoint refuses it
    data = bytearray(run.last_checkpoint.read_bytes())
    data[-1] ^= 0x01
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(tmp_path / "bad.safetensors")


def test_width64_torchvision_layout_saved_by_torch_gives_torch_logits(tmp_path: Path) -> None:
    from conftest import require

    torch = require("torch")
    import torch_reference

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch_reference.resnet18(num_classes=1000, width=64, stem="imagenet")
    torch_reference.perturb_batchnorm_(net, gen)
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        want = net(x).double().numpy()
    for name, zip_layout in [("resnet18.pth", True), ("resnet18_legacy.pth", False)]:
        torch.save(net.state_dict(), tmp_path / name, _use_new_zipfile_serialization=zip_layout)
        tensors = load_weights(tmp_path / name)
        model = at.models.resnet18()  # torchvision's defaults: 1000 classes, width 64, imagenet stem
        model.load_state_dict(tensors, strict=True)
        assert_state_is(model, {k: v.numpy() for k, v in net.state_dict().items()})
        assert_close_to(eval_logits(model, x.numpy()), want)
    # README's recipe: the .pth named directly as model.weights, a 10-class head in place of fc
    setup = build_model(readme_imagenet_config(f"model.weights={tmp_path / 'resnet18.pth'}"))
    rep = setup.load_report
    assert [k for k, *_ in rep.mismatched] == ["fc.weight", "fc.bias"] and not rep.missing and not rep.unexpected
    assert setup.trainable == ["fc.weight", "fc.bias"] and setup.model.fc.weight.shape == (10, 512)
    body = {k: v.numpy() for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state = setup.model.state_dict()
    assert all(state[k].tobytes() == v.tobytes() for k, v in body.items())


def test_the_readme_imagenet_recipe_is_a_valid_config() -> None:
    cfg = readme_imagenet_config()
    m = cfg.model
    assert (m.width, m.stem, m.in_channels, m.num_classes, m.weights) == (64, "imagenet", 3, 10, "resnet18-f37072fd.pth")
    assert cfg.finetune.freeze_backbone and cfg.finetune.replace_head


# --------------------------------------------------------------------------- refused through the CLI


def test_malicious_pickles_are_refused_by_finetune(tmp_path: Path) -> None:
    procs = {}
    for name in EVIL:
        (tmp_path / name).mkdir()
        procs[name] = cli_popen("finetune", "--weights", str(WEIGHTS / name), "-q", cwd=tmp_path / name)
    assert len(procs) == 6
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 3, f"{name}: {out}{err}"
        assert name in err and err.count("error:") == 1, err
        folder = tmp_path / name
        assert not (folder / SENTINEL).exists() and not (ROOT / SENTINEL).exists()
        assert list(folder.iterdir()) == [], f"{name}: wrote {list(folder.iterdir())}"


def test_a_wrong_architecture_is_refused_listing_every_key(tmp_path: Path) -> None:
    w8 = WEIGHTS / "resnet18_w8.safetensors"
    r = run_cli_subprocess("finetune", "--weights", str(w8), "-q", cwd=tmp_path)
    assert r.returncode == 3 and list(tmp_path.iterdir()) == [], r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    model = build_model(load_config(ROOT / "configs" / "finetune.yaml", ["model.weights=null"])).model
    report = match_state_dict({k: v.shape for k, v in model.state_dict().items()}, load_weights(w8))
    bad = [(k, e, g) for k, e, g in report.mismatched if not k.startswith("fc.")]
    assert len(bad) == 100 and f"shape mismatch for {len(bad)} tensor(s)" in line
    for k, e, g in bad:
        assert f"{k}: file {tuple(g)} vs model {tuple(e)}" in line, k
    assert str(w8) in line


# --------------------------------------------------------------------------- the shipped backbone


def test_the_shipped_backbone_is_what_the_readme_says() -> None:
    readme = (ROOT / "weights" / "README.md").read_text()
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert re.search(rf"\b{digest}\b", readme), "weights/README.md does not give the file's SHA-256"
    tensors, meta = read_safetensors(SHIPPED)
    assert meta == {} and not any(k.startswith("optimizer.") for k in tensors)  # a bare state_dict
    model = at.models.resnet18(num_classes=5, in_channels=1, width=16, stem="small")
    assert sorted(tensors) == sorted(model.state_dict())  # torchvision key names, every one
    assert shipped_file("weights/resnet18_fashion04.safetensors") is not None
    cfg = load_config(ROOT / "configs" / "finetune.yaml")
    assert cfg.model.weights == "weights/resnet18_fashion04.safetensors"
    assert "autotrain convert runs/fashion_pretrain/best.safetensors" in readme
    # its accuracy on the classes it was pretrained on: tests/test_pretrained.py

