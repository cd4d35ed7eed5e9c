"""``autotrain export`` (ONNX, checked with onnxruntime) and ``autotrain convert OUT.pth``
(torch's zip format written without torch, checked with torch when installed).

Two models: the digits model (configs/tiny.yaml, small stem, trained 1 epoch through the
CLI) and a width-64 imagenet-stem model (torchvision's resnet18 shape, 3x32x32 digits,
random weights with perturbed BatchNorm statistics, written as a checkpoint directly).
Logits are compared with autotrain's eval logits on validation images; "relative" means
max |got - want| / max |want| over the batch (an element-wise ratio is ill-posed for
logits near zero).
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, require, run_cli_subprocess
from typer.testing import CliRunner

from autotrain import __version__
from autotrain.autograd.function import no_grad
from autotrain.autograd.tensor import Tensor
from autotrain.cli.app import app
from autotrain.config import config_to_dict, load_config
from autotrain.data import normalize_own
from autotrain.export.torch_zip import ALIGNMENT, pth_bytes
from autotrain.io.checkpoint import load_checkpoint, save_checkpoint
from autotrain.io.safetensors_io import read_safetensors
from autotrain.io.torch_pth import read_pth_bytes
from autotrain.io.weights import load_weights, save_weights
from autotrain.train.inference import load_trained
from autotrain.train.run import load_data
from autotrain.train.setup import model_from_config

TINY = ROOT / "configs" / "tiny.yaml"
NUM_IMAGES = 6
RTOL = 1e-5
W64 = ["model.width=64", "model.stem=imagenet", "model.in_channels=3", "model.num_classes=10",
       "data.image_size=32", "data.classes=null"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


class Model:
    """A checkpoint, NUM_IMAGES validation images (0..1 and normalised) and autotrain's eval logits."""

    def __init__(self, path: Path):
        self.path = path
        trained = load_trained(str(path))
        self.meta = trained.checkpoint.metadata
        self.config = trained.config
        norm = self.meta["normalisation"]
        self.raw = np.ascontiguousarray(load_data(trained.config).val_x[:NUM_IMAGES], dtype=np.float32)
        self.normalised = normalize_own(self.raw.copy(), norm["mean"], norm["std"])
        with no_grad():
            self.logits = trained.model(Tensor(self.normalised)).data
        self.state = trained.checkpoint.model_state
        self.names = list(trained.model.state_dict())  # torchvision's order (the checkpoint's is sorted)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Model:
    out = tmp_path_factory.mktemp("export") / "run"
    r = run_cli_subprocess("train", TINY, "--set", f"output.dir={out}", "--set", "train.epochs=1", "-q")
    assert r.returncode == 0, r.stderr
    return Model(out / "last.safetensors")


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Model:
    cfg = load_config(TINY, W64)
    model = model_from_config(cfg.model)
    rng = np.random.default_rng(0)
    state = model.state_dict()
    for name, array in state.items():  # BatchNorm that is not the identity, so it is exercised
        c = array.shape[0] if array.ndim else 0
        if name.endswith("bn1.weight") or name.endswith("bn2.weight") or name.endswith("downsample.1.weight"):
            state[name] = (0.5 + rng.random(c)).astype(np.float32)
        elif name.endswith(".bias") and not name.startswith("fc."):
            state[name] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        elif name.endswith("running_mean"):
            state[name] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        elif name.endswith("running_var"):
            state[name] = (0.5 + rng.random(c)).astype(np.float32)
    data = load_data(cfg)
    path = tmp_path_factory.mktemp("export") / "wide.safetensors"
    save_checkpoint(path, state, {}, {
        "config": config_to_dict(cfg), "version": __version__,
        "normalisation": {"mean": data.mean, "std": data.std}, "class_names": data.class_names,
        "image_size": cfg.data.image_size, "in_channels": cfg.model.in_channels})
    return Model(path)


@pytest.fixture
def models(digits, wide):
    return {"digits": digits, "wide": wide}


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", ["digits", "wide"])
@pytest.mark.parametrize("raw_pixels", [False, True], ids=["normalised", "raw-pixels"])
@pytest.mark.parametrize("batch", ["1", "dynamic"])
def test_onnxruntime_logits_match_autotrain_eval_logits(models, name, raw_pixels, batch, tmp_path):
    onnx = require("onnx")
    ort = require("onnxruntime")
    m = models[name]
    out = tmp_path / "model.onnx"
    r = cli("export", m.path, out, "--batch", batch, *(["--raw-pixels"] if raw_pixels else []))
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stdout

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    expected = {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    expected |= {"MaxPool"} if m.config.model.stem == "imagenet" else set()
    expected |= {"Sub", "Mul"} if raw_pixels else set()
    assert ops == expected
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 20  # ResNet-18: 17 + 3 downsample

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    c, s = m.meta["in_channels"], m.meta["image_size"]
    n = 1 if batch == "1" else "batch"
    assert (inp.name, inp.type, inp.shape) == ("images", "tensor(float)", [n, c, s, s])
    assert (outp.name, outp.shape) == ("logits", [n, m.config.model.num_classes])

    x = m.raw if raw_pixels else m.normalised
    if batch == "1":
        got = np.concatenate([session.run(["logits"], {"images": x[i:i + 1]})[0] for i in range(len(x))])
    else:
        got = session.run(["logits"], {"images": x})[0]
        odd = session.run(["logits"], {"images": x[:3]})[0]  # another batch size, same graph
        assert relative(odd, m.logits[:3]) < RTOL
    assert got.shape == m.logits.shape
    assert relative(got, m.logits) < RTOL, relative(got, m.logits)
    assert (got.argmax(1) == m.logits.argmax(1)).all()


def test_onnx_metadata_and_names(digits, tmp_path):
    onnx = require("onnx")
    out = tmp_path / "m.onnx"
    assert cli("export", digits.path, out, "--raw-pixels", "--opset", "13").exit_code == 0
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = digits.meta
    assert json.loads(props["class_names"]) == meta["class_names"]
    assert int(props["image_size"]) == meta["image_size"] and int(props["in_channels"]) == meta["in_channels"]
    assert json.loads(props["mean"]) == meta["normalisation"]["mean"]
    assert json.loads(props["std"]) == meta["normalisation"]["std"]
    assert json.loads(props["raw_pixels"]) is True
    assert props["autotrain_version"] == __version__ and proto.producer_name == "autotrain"
    assert json.loads(props["config"]) == config_to_dict(digits.config)
    assert props["checkpoint_sha256"] == load_checkpoint(digits.path).sha256
    assert [o.version for o in proto.opset_import] == [13]
    onnx.checker.check_model(proto, full_check=True)
    ort = require("onnxruntime")
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"images": digits.raw})[0]
    assert relative(got, digits.logits) < RTOL
    # weights under their state_dict names, bit for bit (BatchNorm not folded)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    float_state = {k: v for k, v in digits.state.items() if not k.endswith("num_batches_tracked")}
    assert set(inits) == set(float_state) | {"normalise.mean", "normalise.inv_std"}
    assert all(np.array_equal(inits[k], v) for k, v in float_state.items())


def test_export_refuses_what_is_not_a_checkpoint(digits, tmp_path):
    require("onnx")  # without it, export stops earlier (exit 2, tested below)
    bare = tmp_path / "bare.safetensors"
    save_weights(digits.state, bare)  # the right tensors, but no config or normalisation
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights at all")
    wrong = tmp_path / "wrong.safetensors"  # a checkpoint whose config says width 8 for width-4 tensors
    meta = load_checkpoint(digits.path).metadata
    meta["config"]["model"]["width"] = 8
    save_checkpoint(wrong, digits.state, {}, meta)
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"previous")
    for path, message in [(bare, "export needs a checkpoint"), (garbage, "export needs a checkpoint"),
                          (tmp_path / "missing.safetensors", "export needs a checkpoint"),
                          (wrong, "conv1.weight: checkpoint (4, 1, 3, 3) vs model (8, 1, 3, 3)")]:
        r = cli("export", path, out)
        assert r.exit_code == 3, r.output
        assert path.name in r.output and message in r.output, r.output
        assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.safetensors", "garbage.safetensors", "keep.onnx",
                                                          "wrong.safetensors"]


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch 0: expected a positive integer or 'dynamic'"),
    (["--batch", "many"], "--batch many: expected a positive integer or 'dynamic'"),
    (["--opset", "5"], "--opset 5: must be between 11 and"),
])
def test_export_usage_errors_exit_2_and_write_nothing(digits, tmp_path, args, message):
    require("onnx")
    r = cli("export", digits.path, tmp_path / "m.onnx", *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_export_without_onnx_exits_2_with_the_install_hint(digits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    r = cli("export", digits.path, tmp_path / "m.onnx")
    assert r.exit_code == 2, r.output
    assert "pip install 'autotrain[onnx]'" in r.output
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- .pth writer


def local_entries(data: bytes) -> list[tuple[str, int, int]]:
    """(name, compression method, data offset) of each zip entry, from its local header."""
    out = []
    for info in zipfile.ZipFile(io.BytesIO(data)).infolist():
        h = info.header_offset
        method, = struct.unpack("<H", data[h + 8:h + 10])
        name_len, extra_len = struct.unpack("<HH", data[h + 26:h + 30])
        out.append((info.filename, method, h + 30 + name_len + extra_len))
    return out


def test_pth_bytes_round_trip_alignment_and_determinism():
    rng = np.random.default_rng(1)
    state = OrderedDict([
        ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("steps", np.array(7, dtype=np.int64)),  # 0-d, as num_batches_tracked
        ("mask", np.array([True, False, True])),
        ("half", rng.standard_normal((2, 5)).astype(np.float16)),
        ("double", rng.standard_normal(3)),
        ("big_endian", np.arange(6, dtype=">f4").reshape(2, 3)),
        ("transposed", np.arange(12, dtype=np.int32).reshape(3, 4).T),  # not C-contiguous
        ("empty", np.zeros((0, 4), np.float32)),
        ("large", np.arange(70_000, dtype=np.float32)),  # BININT / BININT2 sizes in the pickle
    ])
    data = pth_bytes(state)
    assert pth_bytes(state) == data
    back = read_pth_bytes(data, "x.pth")
    assert list(back) == list(state)
    for name, want in state.items():
        assert back[name].shape == want.shape and back[name].dtype == want.dtype.newbyteorder("=")
        assert np.array_equal(back[name], want), name
    entries = local_entries(data)
    names = [n for n, _, _ in entries]
    assert names[:5] == ["archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                         "archive/byteorder", "archive/data/0"]
    assert names[-1] == "archive/version" and len(names) == 5 + len(state)
    assert all(method == zipfile.ZIP_STORED and offset % ALIGNMENT == 0 for _, method, offset in entries)
    assert zipfile.ZipFile(io.BytesIO(data)).read("archive/version") == b"3\n"


def test_pth_bytes_refuses_a_dtype_torch_cannot_hold():
    with pytest.raises(Exception, match="'w' has dtype uint16"):
        pth_bytes({"w": np.zeros(3, np.uint16)}, "in.npz")


def test_convert_to_pth_keeps_the_model_state_only(digits, tmp_path):
    out = tmp_path / "model.pth"
    r = cli("convert", digits.path, out)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}: {len(digits.state)} tensors" in r.stdout
    back = load_weights(out)  # autotrain's own restricted reader
    assert list(back) == digits.names  # torchvision's order, no optimizer.* tensors
    assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v) for k, v in digits.state.items())
    # the same file through safetensors and back gives the same bytes: nothing is lost
    cli("convert", out, tmp_path / "again.safetensors")
    tensors, _ = read_safetensors(tmp_path / "again.safetensors")
    assert all(tensors[k].tobytes() == v.tobytes() for k, v in digits.state.items())


def test_convert_to_pth_refuses_a_wrong_architecture(digits, tmp_path):
    dropped = dict(digits.state)
    del dropped["layer4.1.bn2.weight"]
    extra = dict(digits.state, **{"head.weight": np.zeros((2, 2), np.float32)})
    reshaped = dict(digits.state, **{"layer2.0.conv1.weight": np.zeros((8, 4, 1, 1), np.float32)})
    cases = {"dropped": (dropped, "missing layer4.1.bn2.weight"), "extra": (extra, "unexpected head.weight"),
             "reshaped": (reshaped, "shape mismatch layer2.0.conv1.weight: file (8, 4, 1, 1) vs model (8, 4, 3, 3)"),
             "other": ({"w": np.ones(3, np.float32)}, "not a ResNet-18 state_dict"),
             # a width of 1024 claimed in a small file is refused before a network that wide is built
             "claims": (dict(digits.state, **{"conv1.weight": np.ones((1024, 1, 3, 3), np.float32)}),
                        "needs layer4.1.conv2.weight of shape (8192, 8192, 3, 3)")}
    for name, (state, message) in cases.items():
        src = tmp_path / f"{name}.safetensors"
        save_weights(state, src)
        r = cli("convert", src, tmp_path / "out.pth")
        assert r.exit_code == 3, r.output
        assert f"{name}.safetensors" in r.output and message in r.output and "wrong architecture" in r.output, r.output
        assert not (tmp_path / "out.pth").exists()
    r = cli("convert", digits.path, tmp_path / "out.pt")
    assert r.exit_code == 2 and "use one of .safetensors, .npz, .pth" in r.output


@pytest.mark.parametrize("name", ["digits", "wide"])
def test_torch_loads_the_pth_and_gives_autotrain_logits(models, name, tmp_path):
    torch = require("torch")
    import torch_reference

    m = models[name]
    out = tmp_path / "model.pth"
    assert cli("convert", m.path, out).exit_code == 0
    state = torch.load(out, weights_only=True)
    assert list(state) == m.names
    for k, v in m.state.items():
        assert state[k].numpy().dtype == v.dtype and np.array_equal(state[k].numpy(), v), k
    mc = m.config.model
    net = torch_reference.resnet18(num_classes=mc.num_classes, in_channels=mc.in_channels, width=mc.width,
                                   stem=mc.stem)
    net.load_state_dict(state, strict=True)  # torchvision's layout, every key
    net.eval()
    with torch.no_grad():
        got = net(torch.from_numpy(m.normalised)).numpy()
    assert relative(got, m.logits) < RTOL
    assert (got.argmax(1) == m.logits.argmax(1)).all()
    # the records torch.save writes for the same state dict (bar its random serialization id),
    # with the same storage bytes
    ref = tmp_path / "archive.pth"  # torch names the zip's folder after the file
    torch.save(OrderedDict((k, torch.from_numpy(np.array(m.state[k]))) for k in m.names), ref)
    ours, theirs = zipfile.ZipFile(out), zipfile.ZipFile(ref)
    assert set(ours.namelist()) == set(theirs.namelist()) - {"archive/.data/serialization_id"}
    for entry in ours.namelist():
        if entry != "archive/data.pkl":
            assert ours.read(entry) == theirs.read(entry), entry
