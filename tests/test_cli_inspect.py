"""``autotrain evaluate``, ``predict``, ``inspect`` and ``config show`` on a real trained run."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_cli_subprocess
from PIL import Image
from typer.testing import CliRunner

from autotrain import nn, tensor
from autotrain.autograd.function import no_grad
from autotrain.cli.app import app
from autotrain.config import config_to_dict, config_to_yaml, load_config
from autotrain.io.checkpoint import load_checkpoint
from autotrain.train.inference import load_trained
from autotrain.train.run import load_data

TINY = ROOT / "configs" / "tiny.yaml"
EPOCHS = 3


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "run"
    r = run_cli_subprocess("train", TINY, "--set", f"output.dir={out}", "--set", f"train.epochs={EPOCHS}", "-q")
    assert r.returncode == 0, r.stderr
    return out


def table_rows(text: str, first_cells: list[str]) -> dict[str, list[str]]:
    """Cells of the rich table rows whose first cell is one of ``first_cells``."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] in first_cells:
            rows[cells[0]] = cells[1:]
    return rows


# --------------------------------------------------------------------------- evaluate


def test_evaluate_reports_the_accuracy_training_measured_and_a_confusion_matrix(run_dir):
    best = load_checkpoint(run_dir / "best.safetensors").metadata
    epoch = best["position"]["epoch"]
    trained_acc = best["history"][epoch - 1]["val_acc"]
    trained_loss = best["history"][epoch - 1]["val_loss"]
    r = cli("evaluate", run_dir / "best.safetensors")
    assert r.exit_code == 0, r.output
    m = re.search(r"accuracy ([0-9.]+) loss ([0-9.]+) on (\d+) images", r.stdout)
    assert m, r.stdout
    n = int(m.group(3))
    assert n == best["data_info"]["num_val"]
    assert float(m.group(1)) == pytest.approx(trained_acc, abs=5e-5)
    assert float(m.group(2)) == pytest.approx(trained_loss, abs=5e-5)

    names = best["class_names"]
    matrix, per_class = r.stdout.split("per class")
    rows = table_rows(matrix, names)
    assert list(rows) == names, r.stdout
    counts = np.array([[int(v) for v in rows[c][:len(names)]] for c in names])
    assert counts.sum() == n
    assert np.trace(counts) / n == pytest.approx(trained_acc, abs=1e-9)
    # recall = diagonal / row sum, precision = diagonal / column sum (3 decimals), support = row sum
    rows = table_rows(per_class, names)
    for i, c in enumerate(names):
        precision, recall, support = float(rows[c][0]), float(rows[c][1]), int(rows[c][2])
        assert recall == pytest.approx(counts[i, i] / counts[i].sum(), abs=5e-4)
        assert precision == pytest.approx(counts[i, i] / counts[:, i].sum(), abs=5e-4)
        assert support == counts[i].sum()


def test_evaluate_of_ten_classes_fits_80_columns_and_a_pipe(tmp_path):
    """Piped (rich's 80 columns): every precision and recall is printed whole, no cell is cut."""
    out = tmp_path / "run"
    r = run_cli_subprocess("train", TINY, "--set", f"output.dir={out}", "--set", "train.epochs=1", "--set",
                           "data.classes=null", "--set", "model.num_classes=10", "-q")
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = run_cli_subprocess("evaluate", out / "last.safetensors", env=env)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and max(map(len, r.stdout.splitlines())) <= 80, r.stdout
    rows = table_rows(r.stdout.split("per class")[1], [str(d) for d in range(10)])
    assert len(rows) == 10
    for cells in rows.values():
        assert all(re.fullmatch(r"\d\.\d{3}|-", v) for v in cells[:2]) and cells[2].isdigit(), cells


def test_a_wide_confusion_matrix_is_split_into_tables_that_fit():
    from rich.console import Console

    from autotrain.cli.render import confusion_tables

    names = [f"class_{i:02d}" for i in range(50)]
    counts = np.random.default_rng(0).integers(0, 12000, (50, 50))
    tables = confusion_tables(counts, names, 80)
    assert len(tables) > 1
    console = Console(width=80, record=True, file=io.StringIO())
    seen = []
    for t in tables:
        console.print(t)
        seen += [c.header for c in t.columns[1:]]
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    assert seen == names  # every predicted class once, in order
    assert str(int(counts[49, 49])) in text


def run_with_closed_stdout(*args) -> tuple[int, str]:
    """``autotrain ARGS | head -0``, deterministically: the pipe's reading end is closed
    before the command prints anything, so its every write to stdout meets a closed pipe."""
    import subprocess

    from conftest import CLI, cli_env

    read_end, write_end = os.pipe()
    proc = subprocess.Popen([*CLI, *map(str, args)], env=cli_env(), stdout=write_end, stderr=subprocess.PIPE,
                            text=True)
    os.close(write_end)
    os.close(read_end)  # the reader is gone
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def test_a_closed_stdout_costs_no_run_and_read_only_commands_end_quietly(run_dir, tmp_path):
    """`autotrain train ... | head -1`: the run goes on to its own end and exit code;
    `autotrain inspect ... | head -1` (and the other read-only commands) exit 0, stderr empty."""
    out = tmp_path / "run"
    code, stderr = run_with_closed_stdout("train", TINY, "--set", f"output.dir={out}", "--set", "train.epochs=1")
    assert code == 0 and stderr == "", stderr
    meta = load_checkpoint(out / "last.safetensors").metadata
    assert meta["finished"] is True and meta["position"]["epoch"] == 1
    # the run's own exit code still comes through: a bad config is exit 2 with its line on stderr
    code, stderr = run_with_closed_stdout("train", TINY, "--set", "optimizer.lr=abc")
    assert code == 2 and stderr.startswith("error: --set optimizer.lr=abc"), stderr

    for args in (["inspect", run_dir / "last.safetensors"], ["config", "show", TINY],
                 ["evaluate", run_dir / "last.safetensors"]):
        code, stderr = run_with_closed_stdout(*args)
        assert code == 0 and stderr == "", (args, code, stderr)


def test_evaluate_on_other_data_with_set(run_dir):
    r = cli("evaluate", run_dir / "last.safetensors", "--set", "data.val_fraction=0.5")
    assert r.exit_code == 0, r.output
    m = re.search(r"on (\d+) images", r.stdout)
    info = load_checkpoint(run_dir / "last.safetensors").metadata["data_info"]
    assert m and int(m.group(1)) == round(0.5 * (info["num_train"] + info["num_val"]))
    r = cli("evaluate", run_dir / "last.safetensors", "--set", "data.image_size=three")
    assert r.exit_code == 2 and "data.image_size" in r.stderr
    # The model is the checkpoint's: changing it is a usage error, not a traceback.
    r = cli("evaluate", run_dir / "last.safetensors", "--set", "data.classes=[0, 1]", "--set", "model.num_classes=2")
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert "model.num_classes" in line


@pytest.mark.parametrize("command", ["evaluate", "inspect", "predict"])
def test_missing_or_corrupt_checkpoint_exits_3_naming_it(run_dir, tmp_path, command):
    bad = tmp_path / "bad.safetensors"
    data = bytearray((run_dir / "last.safetensors").read_bytes())
    data[-3] ^= 0x10
    bad.write_bytes(bytes(data))
    extra = [str(tmp_path / "x.png")] if command == "predict" else []
    for path, why in [(bad, "corrupt"), (tmp_path / "absent.safetensors", "no such file")]:
        r = cli(command, path, *extra)
        assert r.exit_code == 3, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and why in lines[0], r.stderr


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def sample_pngs(run_dir, tmp_path_factory):
    """12 validation digits written as 8-bit PNGs, with their labels and the model's own
    probabilities for the unquantised pixels."""
    folder = tmp_path_factory.mktemp("pngs")
    trained = load_trained(str(run_dir / "best.safetensors"))
    data = load_data(trained.config)
    x, y = data.val_x[:12], data.val_y[:12]
    paths = []
    for i, img in enumerate(x):
        p = folder / f"digit{i}.png"
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8)).save(p)
        paths.append(p)
    mean = np.asarray(data.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(data.std, np.float32).reshape(1, -1, 1, 1)
    with no_grad():
        probs = nn.functional.softmax(trained.model(tensor((x - mean) / std)), dim=1).data
    return paths, [data.class_names[i] for i in y], probs, data.class_names


def parse_predictions(stdout: str) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for line in stdout.strip().splitlines():
        path, _, rest = line.rpartition(": ")
        out[path] = [(name, float(p)) for name, p in (item.split(" ") for item in rest.split(", "))]
    return out


def test_predict_top_k_from_png_files(run_dir, sample_pngs):
    paths, labels, probs, names = sample_pngs
    r = cli("predict", run_dir / "best.safetensors", *paths, "--top-k", "2")
    assert r.exit_code == 0, r.output
    preds = parse_predictions(r.stdout)
    assert list(preds) == [str(p) for p in paths]
    correct = 0
    for (path, top), label, ref in zip(preds.items(), labels, probs):
        assert len(top) == 2
        assert top[0][1] >= top[1][1] and 0 < top[0][1] <= 1
        # the same top class and probability as the model on the unquantised pixels
        assert top[0][0] == names[int(np.argmax(ref))]
        assert top[0][1] == pytest.approx(float(ref.max()), abs=0.02)
        correct += top[0][0] == label
    assert correct >= 10, f"{correct}/12 digits right"


def test_predict_k_larger_than_classes_lists_all_and_sums_to_one(run_dir, sample_pngs):
    paths, *_ = sample_pngs
    r = cli("predict", run_dir / "best.safetensors", paths[0], "-k", "10")
    assert r.exit_code == 0, r.output
    (top,) = parse_predictions(r.stdout).values()
    assert sorted(name for name, _ in top) == ["0", "1", "2"]
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=0.003)


def test_predict_on_a_file_that_is_not_an_image_exits_4(run_dir, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    r = cli("predict", run_dir / "best.safetensors", bad)
    assert r.exit_code == 4, r.output
    (line,) = r.stderr.strip().splitlines()
    assert str(bad) in line


# --------------------------------------------------------------------------- inspect


def test_inspect_shows_position_parameters_metrics_and_config(run_dir):
    path = run_dir / "last.safetensors"
    ckpt = load_checkpoint(path)
    meta = ckpt.metadata
    r = cli("inspect", path)
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert f"{path} autotrain {meta['version']} sha256 {ckpt.sha256[:16]}" in text
    steps = meta["step"]
    assert f"after epoch {EPOCHS}, step {steps}, finished True, best val_acc {meta['best_val_acc']}" in text
    n_params = sum(int(p.data.size) for p in load_trained(str(path)).model.parameters())
    assert n_params < sum(a.size for a in ckpt.model_state.values())  # buffers are not parameters
    assert f"{n_params:,} parameters; classes ['0', '1', '2']" in text
    rows = table_rows(text, [str(e) for e in range(1, EPOCHS + 1)])
    assert list(rows) == ["1", "2", "3"]
    for e, row in rows.items():
        assert float(row[3]) == pytest.approx(meta["history"][int(e) - 1]["val_acc"], abs=5e-5)
    assert (run_dir / "config.yaml").read_text() in text


def test_inspect_mid_epoch_checkpoint_names_the_epoch_in_progress(tmp_path):
    """SIGTERM while config.yaml is written (each write paused 0.2 s): the checkpoint holds
    one step of epoch 1; inspect says so with the same 1-based epoch numbers as training."""
    import signal
    import time

    from conftest import cli_popen

    out = tmp_path / "run"
    proc = cli_popen("train", TINY, "--set", f"output.dir={out}", "-q",
                     env={"AUTOTRAIN_FAULT_WRITE_SLEEP": "0.2"})
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob(".config.yaml.tmp-*"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    meta = load_checkpoint(out / "last.safetensors").metadata
    per_epoch = meta["schedule"]["steps_per_epoch"]
    r = cli("inspect", out / "last.safetensors")
    assert r.exit_code == 0, r.output
    assert f"in epoch 1 after batch 1 of {per_epoch}, step 1, finished False, best val_acc None" in r.stdout


# --------------------------------------------------------------------------- config show


def test_config_show_prints_the_effective_config_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("config", "show", "digits.yaml", "--set", "optimizer.lr=1e-2", "--set", "train.epochs=3")
    assert r.exit_code == 0, r.output
    expected = load_config(ROOT / "configs" / "digits.yaml", ["optimizer.lr=1e-2", "train.epochs=3"])
    assert r.stdout == config_to_yaml(expected)
    shown = yaml.safe_load(r.stdout)
    assert shown == config_to_dict(expected)
    assert shown["optimizer"]["lr"] == 0.01 and shown["finetune"]["backbone_lr_mult"] == 0.1
    assert list(tmp_path.iterdir()) == []


def test_config_show_errors_exit_2(tmp_path):
    r = cli("config", "show", TINY, "--set", "optimizer.lr=fast", "--set", "model.depth=50")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "model.depth" in r.stderr and "optimizer.lr" in r.stderr
    r = cli("config", "show", tmp_path / "none.yaml")
    assert r.exit_code == 2 and str(tmp_path / "none.yaml") in r.stderr
