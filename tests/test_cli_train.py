"""``autotrain train`` through the CLI: config and data errors, run files, shipped configs.

Error cases run in-process through typer's CliRunner (nothing trains); runs that train go
through a subprocess of this checkout's CLI with BLAS threads pinned (conftest.run_cli).
"""

from __future__ import annotations

import csv
import gzip
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from autotrain.cli.app import app
from autotrain.config import config_to_dict, config_to_yaml, load_config
from autotrain.data.digits import load_digits_raw
from autotrain.io.checkpoint import load_checkpoint

TINY = ROOT / "configs" / "tiny.yaml"
COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds"]


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), result.stderr
    return [line[len("error: "):] for line in lines]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- config errors


CONFIG_ERRORS = [
    # (overrides, dotted fields that must each be named on their own line)
    (["model.colour=red"], ["model.colour"]),
    (["train.epochs=two"], ["train.epochs"]),
    (["train.epochs=2.5"], ["train.epochs"]),
    (["optimizer.lr=0"], ["optimizer.lr"]),
    (["optimizer.momentum=1.0"], ["optimizer.momentum"]),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], ["optimizer.nesterov"]),
    (["data.path=/somewhere"], ["data.path"]),
    (["data.source=npz"], ["data.path"]),
    (["model.num_classes=4"], ["model.num_classes"]),
    (["schedule.name=linear"], ["schedule.name"]),
    (["optimizer.lr=-1", "train.batch_size=0", "output.keep_last=-2"],
     ["optimizer.lr", "train.batch_size", "output.keep_last"]),
]


@pytest.mark.parametrize("overrides,fields", CONFIG_ERRORS, ids=[" ".join(o) for o, _ in CONFIG_ERRORS])
def test_config_error_exits_2_one_line_per_field_and_writes_nothing(tmp_path, overrides, fields):
    out = tmp_path / "run"
    args = ["train", TINY, "--set", f"output.dir={out}"]
    for o in overrides:
        args += ["--set", o]
    r = cli(*args)
    assert r.exit_code == 2, r.output
    lines = error_lines(r)
    assert len(lines) == len(fields), lines
    for line, field in zip(lines, fields):
        assert field in line, (field, line)
    assert r.stdout == ""
    assert tree(tmp_path) == []


def test_config_file_errors_name_field_and_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  num_classes: 3\n  width: 4\noptimizer:\n  lr: 0.1\n  lrr: 2\n"
                   "train:\n  epochs: 1\n  epochs: 2\n")
    r = cli("train", cfg, "--set", f"output.dir={tmp_path / 'run'}")
    assert r.exit_code == 2
    lines = error_lines(r)
    assert len(lines) == 2, lines
    assert any("optimizer.lrr" in line and "line 6" in line for line in lines), lines
    assert any("train.epochs" in line and "duplicate" in line for line in lines), lines
    assert tree(tmp_path) == ["bad.yaml"]


@pytest.mark.parametrize("text,where", [("model: [unclosed\n", ":1:"), ("", "empty"), ("- a\n- b\n", "mapping")])
def test_unreadable_config_exits_2_naming_the_file(tmp_path, text, where):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    r = cli("train", cfg)
    assert r.exit_code == 2
    (line,) = error_lines(r)
    assert line.startswith(str(cfg)) and where in line, line


def test_missing_config_and_bad_override_syntax_exit_2(tmp_path):
    r = cli("train", tmp_path / "nope.yaml")
    assert r.exit_code == 2 and error_lines(r) == [f"{tmp_path / 'nope.yaml'}: no such file"]
    r = cli("train", TINY, "--set", "optimizer.lr")
    assert r.exit_code == 2
    (line,) = error_lines(r)
    assert "--set optimizer.lr" in line
    assert tree(tmp_path) == []


def test_a_missing_config_in_another_folder_is_not_replaced_by_a_shipped_one(tmp_path):
    """Only a bare name or configs/<name> falls back to the shipped configs."""
    missing = tmp_path / "experiments" / "tiny.yaml"
    r = cli("train", missing, "--set", f"output.dir={tmp_path / 'run'}")
    assert r.exit_code == 2 and error_lines(r) == [f"{missing}: no such file"]
    r = cli("config", "show", missing)
    assert r.exit_code == 2 and error_lines(r) == [f"{missing}: no such file"]
    assert tree(tmp_path) == []


def test_output_dir_that_is_a_file_exits_2(tmp_path):
    (tmp_path / "taken").write_text("x")
    r = cli("train", TINY, "--set", f"output.dir={tmp_path / 'taken'}")
    assert r.exit_code == 2
    (line,) = error_lines(r)
    assert line.startswith("output.dir") and str(tmp_path / "taken") in line
    assert tree(tmp_path) == ["taken"]


def test_brackets_in_paths_are_printed_literally(tmp_path):
    """Paths are user text, not rich markup: '[/]' must neither vanish nor crash the CLI."""
    cfg = tmp_path / "a[/]b.yaml"
    r = cli("train", str(cfg))
    assert r.exit_code == 2 and error_lines(r) == [f"{cfg}: no such file"]


# --------------------------------------------------------------------------- data errors


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 2051 if array.ndim == 3 else 2049
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def digits_as_mnist(count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Built-in digits (8x8, 0..16) made MNIST-like: 28x28 uint8, 0..255."""
    x, y = load_digits_raw()
    x, y = x[offset:offset + count], y[offset:offset + count]
    big = np.kron(x.reshape(-1, 8, 8).astype(np.float64), np.ones((3, 3)))  # 24x24
    big = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    return np.round(big * 255 / 16).astype(np.uint8), y.astype(np.uint8)


def make_idx_folder(folder: Path, train: int = 200, val: int = 60, gz_val: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = digits_as_mnist(train)
    write_idx(folder / "train-images-idx3-ubyte", x)
    write_idx(folder / "train-labels-idx1-ubyte", y)
    if val:
        vx, vy = digits_as_mnist(val, offset=train)
        suffix = ".gz" if gz_val else ""
        write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", vx)
        write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", vy)
    return folder


def _idx_missing(root: Path) -> tuple[list[str], Path]:
    return ["data.source=idx", f"data.path={root / 'absent'}"], root / "absent"


def _idx_bad_magic(root: Path) -> tuple[list[str], Path]:
    folder = make_idx_folder(root / "idx", val=0)
    write_idx(folder / "train-images-idx3-ubyte", digits_as_mnist(20)[0], magic=2049)
    return ["data.source=idx", f"data.path={folder}"], folder / "train-images-idx3-ubyte"


def _idx_truncated(root: Path) -> tuple[list[str], Path]:
    folder = make_idx_folder(root / "idx", val=0)
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])
    return ["data.source=idx", f"data.path={folder}"], labels


def _idx_label_out_of_range(root: Path) -> tuple[list[str], Path]:
    folder = make_idx_folder(root / "idx", val=0)
    y = digits_as_mnist(200)[1].copy()
    y[7] = 12
    write_idx(folder / "train-labels-idx1-ubyte", y)
    return ["data.source=idx", f"data.path={folder}"], folder / "train-labels-idx1-ubyte"


def _idx_only_labels(root: Path) -> tuple[list[str], Path]:
    folder = make_idx_folder(root / "idx", val=0)
    (folder / "train-images-idx3-ubyte").unlink()
    return ["data.source=idx", f"data.path={folder}"], folder / "train-images-idx3-ubyte"


def _npz_missing(root: Path) -> tuple[list[str], Path]:
    return ["data.source=npz", f"data.path={root / 'none.npz'}"], root / "none.npz"


def _npz_without_y(root: Path) -> tuple[list[str], Path]:
    path = root / "data.npz"
    np.savez(path, x=np.zeros((10, 8, 8), np.uint8))
    return ["data.source=npz", f"data.path={path}"], path


def _npz_not_npz(root: Path) -> tuple[list[str], Path]:
    path = root / "data.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    return ["data.source=npz", f"data.path={path}"], path


def _imagefolder_empty(root: Path) -> tuple[list[str], Path]:
    (root / "images").mkdir()
    return ["data.source=imagefolder", f"data.path={root / 'images'}"], root / "images"


def _digits_unknown_class(root: Path) -> tuple[list[str], str]:
    return ["data.classes=[0, 1, 11]"], "built-in dataset 'digits'"


DATA_ERRORS = {
    "idx-missing-folder": _idx_missing, "idx-bad-magic": _idx_bad_magic, "idx-truncated": _idx_truncated,
    "idx-label-out-of-range": _idx_label_out_of_range, "idx-images-missing": _idx_only_labels,
    "npz-missing": _npz_missing, "npz-without-y": _npz_without_y, "npz-not-a-zip": _npz_not_npz,
    "imagefolder-empty": _imagefolder_empty, "digits-unknown-class": _digits_unknown_class,
}


@pytest.mark.parametrize("case", list(DATA_ERRORS))
def test_data_error_exits_4_naming_the_file_and_writes_nothing(tmp_path, case):
    data_root = tmp_path / "data"
    data_root.mkdir()
    overrides, culprit = DATA_ERRORS[case](data_root)
    before = tree(tmp_path)
    args = ["train", ROOT / "configs" / "digits.yaml", "--set", f"output.dir={tmp_path / 'run'}",
            "--set", "data.image_size=28"]
    if case == "digits-unknown-class":
        args = ["train", TINY, "--set", f"output.dir={tmp_path / 'run'}"]
    for o in overrides:
        args += ["--set", o]
    r = cli(*args)
    assert r.exit_code == 4, r.output
    (line,) = error_lines(r)
    assert line.startswith(f"{culprit}: "), line
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- runs


def read_metrics(run_dir: Path) -> tuple[list[str], list[dict]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_idx_data_trains_with_the_digits_config(tmp_path, run_cli):
    folder = make_idx_folder(tmp_path / "mnist", train=200, val=60)
    out = tmp_path / "run"
    r = run_cli("train", "configs/digits.yaml", "--set", "data.source=idx", "--set", f"data.path={folder}",
                "--set", "data.image_size=28", "--set", f"output.dir={out}", "--set", "train.epochs=1",
                "--set", "model.width=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "200 train / 60 val images, 10 classes" in r.stdout
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["image_size"] == 28 and meta["config"]["data"]["source"] == "idx"
    assert meta["data_info"]["num_train"] == 200 and meta["data_info"]["val_source"] == "t10k files"
    _, rows = read_metrics(out)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    assert_row_matches_evaluation(rows[0], out / "last.safetensors", n_train=200, n_val=60)


def assert_row_matches_evaluation(row: dict, checkpoint: Path, n_train: int, n_val: int) -> None:
    """A metrics.csv row against the checkpoint of that epoch evaluated afresh (the code path
    of `autotrain evaluate`): the same validation accuracy and loss, and accuracies that are
    whole counts of the split sizes."""
    from autotrain.train.inference import evaluate_checkpoint, load_trained

    report = evaluate_checkpoint(load_trained(str(checkpoint)))
    assert report.count == n_val
    assert float(row["val_acc"]) == pytest.approx(report.accuracy, abs=0.5 / n_val)
    assert float(row["val_loss"]) == pytest.approx(report.loss, rel=1e-5)
    for column, n in (("val_acc", n_val), ("train_acc", n_train)):
        count = float(row[column]) * n
        assert abs(count - round(count)) < 1e-6, (column, row[column], n)


def test_run_files_metrics_effective_config_and_keep_last(tmp_path, run_cli):
    """keep_last=2 over 5 epochs: exactly epoch-4, epoch-5, last, best (+ config, metrics)."""
    out = tmp_path / "run"
    overrides = [f"output.dir={out}", "train.epochs=5", "output.keep_last=2", "optimizer.lr=0.02"]
    args = ["train", TINY, "-q"]
    for o in overrides:
        args += ["--set", o]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors", "config.yaml", "epoch-4.safetensors", "epoch-5.safetensors",
        "last.safetensors", "metrics.csv"]

    header, rows = read_metrics(out)
    assert header == COLUMNS
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert all(row[c] != "" for c in COLUMNS), row
        assert float(row["images_per_s"]) > 0 and float(row["seconds"]) > 0
    info = load_checkpoint(out / "last.safetensors").metadata["data_info"]
    for epoch in (4, 5):  # the epochs whose checkpoints keep_last=2 keeps
        assert_row_matches_evaluation(rows[epoch - 1], out / f"epoch-{epoch}.safetensors",
                                      info["num_train"], info["num_val"])
    lrs = [float(row["lr"]) for row in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 0.02  # cosine, per step

    effective = load_config(TINY, overrides)
    assert (out / "config.yaml").read_text() == config_to_yaml(effective)
    last = load_checkpoint(out / "last.safetensors")
    steps = last.metadata["step"] // 5
    for name, epoch in [("epoch-4", 4), ("epoch-5", 5), ("last", 5)]:
        meta = load_checkpoint(out / f"{name}.safetensors").metadata
        assert meta["config"] == config_to_dict(effective), name
        assert meta["position"] == {"epoch": epoch, "batch": 0, "step": epoch * steps}, name
        assert [r["epoch"] for r in meta["history"]] == list(range(1, epoch + 1))
    # metrics.csv is the history the final checkpoint carries
    for row, saved in zip(rows, last.metadata["history"]):
        for c in COLUMNS:
            assert float(row[c]) == pytest.approx(float(saved[c]), rel=0, abs=0), c
    # best.safetensors is the epoch with the highest val_acc (the first of equals)
    accs = [float(row["val_acc"]) for row in rows]
    best = load_checkpoint(out / "best.safetensors").metadata
    assert best["best_val_acc"] == max(accs)
    assert best["position"]["epoch"] == accs.index(max(accs)) + 1
    assert last.metadata["best_val_acc"] == max(accs)
    assert last.metadata["finished"] is True
    # the effective config round-trips through `autotrain config show`
    shown = cli("config", "show", TINY, *sum((["--set", o] for o in overrides), []))
    assert shown.exit_code == 0 and shown.stdout == (out / "config.yaml").read_text()


@pytest.mark.parametrize("name", ["digits.yaml", "configs/digits.yaml"])
def test_shipped_configs_are_found_from_any_folder(tmp_path, run_cli, name):
    r = run_cli("train", name, "--set", "output.dir=out", "--set", "train.epochs=1", "--set", "model.width=4",
                "--set", "data.image_size=8", "--set", "data.val_fraction=0.5", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 10 and saved["output"]["dir"] == "out"
    assert saved["data"]["val_fraction"] == 0.5
    assert (tmp_path / "out" / "last.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bracketed_output_dir_is_shown_and_used_literally(tmp_path, run_cli):
    out = tmp_path / "[exp1]"
    r = run_cli("train", TINY, "--set", f"output.dir={out}", "--set", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    assert f"{out}: new run;" in r.stdout
    assert f"finished: {out} (best val_acc" in r.stdout
    assert (out / "last.safetensors").is_file()


# --------------------------------------------------------------------------- signals


def test_sigterm_and_sigint_before_the_first_epoch_ends_exit_143_and_130(tmp_path):
    """Both signals, delivered inside step 2 of epoch 1 (the process signals itself there by the
    fault hook: a chosen moment, not a race): that step finishes, last.safetensors is written
    at epoch 0, batch 2, and is valid."""
    import signal

    from fault_helpers import run_cli as run_with_faults

    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = tmp_path / f"run{code}"
        result = run_with_faults(["train", TINY, "--set", f"output.dir={out}", "--set", "train.batch_size=4",
                                  "--set", "train.epochs=3"], cwd=tmp_path, faults={"signal_at_step": [int(sig), 2]})
        assert result.returncode == code, result.explain()
        (line,) = [x for x in result.stderr.splitlines() if x.strip()]
        assert line == f"error: interrupted by signal {int(sig)}; checkpoint {out / 'last.safetensors'}"
        meta = load_checkpoint(out / "last.safetensors").metadata
        assert meta["finished"] is False
        assert meta["position"] == {"epoch": 0, "batch": 2, "step": 2}  # in the first epoch, at its step 2
        assert not (out / "metrics.csv").exists() and not list(out.glob("epoch-*"))
        assert "Traceback" not in result.stdout + result.stderr
        assert not list(out.glob(".*.tmp-*"))


def test_run_summary_line_reports_best_val_acc(tmp_path, run_cli):
    out = tmp_path / "run"
    r = run_cli("train", TINY, "--set", f"output.dir={out}", "--set", "train.epochs=1", "-q")
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"finished: (.+) \(best val_acc ([0-9.]+), [0-9.]+ s\)", r.stdout.strip())
    assert m and m.group(1) == str(out), r.stdout
    _, rows = read_metrics(out)
    assert float(m.group(2)) == pytest.approx(float(rows[0]["val_acc"]), abs=5e-5)


@pytest.mark.slow
def test_digits_yaml_reaches_95_percent(tmp_path, run_cli):
    """The main job as shipped (10 epochs, width 16, 16x16): >= 95% validation accuracy."""
    out = tmp_path / "digits"
    start = time.perf_counter()
    r = run_cli("train", "configs/digits.yaml", "--set", f"output.dir={out}", "-q", cwd=tmp_path, timeout=3600)
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    _, rows = read_metrics(out)
    assert len(rows) == 10
    final = float(rows[-1]["val_acc"])
    assert final >= 0.95, f"val_acc {final:.4f} after {seconds:.0f} s"
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["data_info"]["num_val"] == round(0.2 * (meta["data_info"]["num_train"] + meta["data_info"]["num_val"]))
