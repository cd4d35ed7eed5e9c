"""``autotrain report`` and ``output.tensorboard`` (issue 13).

One tiny 2-epoch run of configs/tiny.yaml with TensorBoard logging and ``--report`` is shared
by the module (a subprocess of this checkout's CLI with BLAS threads pinned, as a user runs
it); each test reads it or works on a copy. Error cases run in-process through CliRunner.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import re
import shutil
import signal
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_popen, require, run_cli_subprocess
from typer.testing import CliRunner

from autotrain.cli.app import app
from autotrain.io.checkpoint import load_checkpoint
from autotrain.optim import scheduled_lr

TINY = ROOT / "configs" / "tiny.yaml"
PNGS = ("curves.png", "confusion.png", "per_class.png", "mistakes.png")


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", str(TINY), "--set", f"output.dir={out}", "--set", "output.tensorboard=true", "-q", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    require("matplotlib")
    require("tensorboardX")
    out = tmp_path_factory.mktemp("report") / "run"
    r = run_cli_subprocess(*train_args(out, "--report"))
    assert r.returncode == 0, r.stderr
    assert f"report: {out / 'report' / 'index.html'}" in r.stdout
    return out


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag as (step, value) pairs, read by TensorBoard's own EventAccumulator."""
    ea_mod = require("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(logdir), size_guidance={ea_mod.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def steps_per_epoch(run_dir: Path) -> int:
    return load_checkpoint(run_dir / "last.safetensors").metadata["schedule"]["steps_per_epoch"]


# --------------------------------------------------------------------------- the figures


class _Page(HTMLParser):
    """Tags, every URL-carrying attribute, <pre> text and table cells of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.imgs, self.pre, self.cells, self.text = [], [], [], [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action", "background"):
                self.urls.append(value)
            if tag == "img" and name == "src":
                self.imgs.append(value)
        if tag in ("pre", "td", "style"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "pre":
            self.pre.append(data)
        elif self._in == "td":
            self.cells.append(data.strip())
        elif self._in == "style":
            self.urls += re.findall(r"url\(([^)]*)\)", data)


def test_report_pngs_decode_with_their_sizes(run):
    from PIL import Image

    ev_counts = load_checkpoint(run / "best.safetensors")  # the checkpoint the report evaluates
    assert ev_counts.metadata["class_names"] == ["0", "1", "2"]
    sizes = {}
    for name in PNGS:
        with Image.open(run / "report" / name) as im:
            im.load()  # decodes every pixel (a truncated PNG fails here)
            assert im.format == "PNG"
            sizes[name] = im.size
    # Fixed figure sizes at 100 dpi, never cropped: 15x4.2 in; two 4.5 in matrices for 3
    # classes; 7x4 in; mistakes: 8 columns of 1.65 x 1.95 in cells.
    assert sizes["curves.png"] == (1500, 420)
    assert sizes["confusion.png"] == (1100, 550)
    assert sizes["per_class.png"] == (700, 400)
    wrong = int(re.search(r"the (\d+) misclassified", (run / "report" / "index.html").read_text()).group(1))
    shown = min(wrong, 24)
    assert wrong > 0  # a 2-epoch width-4 net makes mistakes: the grid is drawn, not the empty note
    assert sizes["mistakes.png"] == (165 * min(8, shown), 195 * -(-shown // 8))


def test_html_is_self_contained_and_shows_config_summary_and_evaluation(run):
    page_text = (run / "report" / "index.html").read_text()
    page = _Page()
    page.feed(page_text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls), page.urls[:3]
    assert "http://" not in page_text and "https://" not in page_text
    # Each embedded picture is byte for byte one of the PNG files.
    embedded = [base64.b64decode(u.split(",", 1)[1]) for u in page.imgs]
    assert embedded == [(run / "report" / n).read_bytes() for n in PNGS]
    # The effective config, as the run wrote it, with its values.
    assert "".join(page.pre) == (run / "config.yaml").read_text()
    for value in ("lr: 0.05", "width: 4", "image_size: 8", "tensorboard: true", f"dir: {run}"):
        assert value in "".join(page.pre)
    # The summary table: each metrics.csv row's val_acc, to 4 places.
    for row in metrics_rows(run):
        assert f"{float(row['val_acc']):.4f}" in page.cells
    # The accuracy is the one `autotrain evaluate` prints for the same checkpoint.
    r = cli("evaluate", run / "best.safetensors")
    assert r.exit_code == 0, r.output
    accuracy = re.search(r"accuracy (\d\.\d{4}) loss", r.stdout).group(1)
    assert accuracy in page.text
    text = " ".join(page.text)
    assert "after epoch 2 (global step" in text  # the checkpoint's position
    assert "numpy" in page.cells and np.__version__ in page.cells  # machine and versions


def test_confusion_figure_stays_readable_at_50_classes():
    require("matplotlib")
    from autotrain.report.figures import DPI, confusion_figure

    rng = np.random.default_rng(0)
    names = [f"class_{i:02d}" for i in range(50)]
    counts = rng.integers(0, 20, (50, 50)) + np.diag(rng.integers(50, 100, 50))
    fig = confusion_figure(counts, names)
    fig.draw_without_rendering()  # runs the layout (positions below) without rasterising
    assert fig.get_figwidth() * DPI <= 4000  # grows with the classes, within reason
    for ax in fig.axes[:2]:  # the two matrices (their colour bars come after)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == names
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 7
        # at least a quarter inch of matrix per class
        assert ax.get_window_extent().height / DPI / 50 >= 0.25


# --------------------------------------------------------------------------- bad input


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("report"))
    return dst


def _one_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("damage,code,named", [
    ("no metrics.csv", 2, "metrics.csv: missing"),
    ("truncated metrics.csv", 2, "metrics.csv:3: last line is truncated"),
    ("no checkpoint", 3, "no checkpoint to evaluate"),
    ("corrupt best.safetensors", 3, "best.safetensors"),
])
def test_bad_run_folder_one_line_documented_exit_nothing_written(run, tmp_path, damage, code, named):
    bad = _copy(run, tmp_path)
    if damage == "no metrics.csv":
        (bad / "metrics.csv").unlink()
    elif damage == "truncated metrics.csv":
        text = (bad / "metrics.csv").read_text()
        (bad / "metrics.csv").write_text(text[:-12])  # cut inside the last row
    elif damage == "no checkpoint":
        (bad / "best.safetensors").unlink()
        (bad / "last.safetensors").unlink()
    else:
        data = (bad / "best.safetensors").read_bytes()
        (bad / "best.safetensors").write_bytes(data[: len(data) // 2])
    before = snapshot(bad)
    line = _one_error(cli("report", bad), code)
    assert named in line, line
    assert snapshot(bad) == before  # no report/ folder, no temp file


def test_out_that_is_a_file_exits_2(run, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = _one_error(cli("report", run, "-o", afile), 2)
    assert "afile" in line and afile.read_text() == "x"


def test_interrupted_run_is_reported_from_its_last_checkpoint_into_out_only(run, tmp_path):
    """No best.safetensors (a run stopped early): last.safetensors is evaluated and named.
    With -o, OUT (and the folders to it) is all that is written."""
    stopped = _copy(run, tmp_path)
    (stopped / "best.safetensors").unlink()
    shutil.copyfile(stopped / "epoch-1.safetensors", stopped / "last.safetensors")
    before = snapshot(stopped)
    out = tmp_path / "elsewhere" / "rep"
    r = cli("report", stopped, "-o", out)
    assert r.exit_code == 0, r.output
    assert "last.safetensors" in r.stdout
    page = (out / "index.html").read_text()
    assert "after epoch 1 (global step" in page and f"{stopped / 'last.safetensors'}" in page
    assert snapshot(stopped) == before
    assert sorted(p.name for p in (tmp_path / "elsewhere").rglob("*")) == sorted(["rep", *PNGS, "index.html"])


def test_missing_extra_says_how_to_install_before_training(tmp_path, monkeypatch):
    """Without tensorboardX / matplotlib: one line with the pip command, exit 2, nothing written."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "run"
    for args in (["--set", "output.tensorboard=true"], ["--report"]):
        line = _one_error(cli("train", TINY, "--set", f"output.dir={out}", "-q", *args), 2)
        assert "pip install 'autotrain[report]'" in line, line
    assert not out.exists()
    line = _one_error(cli("report", tmp_path), 2)
    assert "pip install 'autotrain[report]'" in line


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_steps_and_values(run):
    """Per-step train/loss and train/lr at steps 1..2S; per-epoch values at the epoch's last
    step, equal to metrics.csv; the lr is the schedule's for that step."""
    s = steps_per_epoch(run)
    tags = scalars(run / "tb")
    assert [st for st, _ in tags["train/loss"]] == list(range(1, 2 * s + 1))
    assert [st for st, _ in tags["train/lr"]] == list(range(1, 2 * s + 1))
    assert all(np.isfinite(v) and v > 0 for _, v in tags["train/loss"])
    want_lr = [scheduled_lr(0.05, "cosine", step - 1, s, 2, 0, 30, 0.1) for step in range(1, 2 * s + 1)]
    np.testing.assert_allclose([v for _, v in tags["train/lr"]], want_lr, rtol=1e-6)
    rows = metrics_rows(run)
    for tag, column in (("val/acc", "val_acc"), ("val/loss", "val_loss"), ("epoch/train_loss", "train_loss"),
                        ("epoch/train_acc", "train_acc"), ("speed/images_per_s", "images_per_s")):
        assert [st for st, _ in tags[tag]] == [s, 2 * s], tag
        np.testing.assert_allclose([v for _, v in tags[tag]], [float(r[column]) for r in rows], rtol=1e-6)


def _event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.glob("events.out.tfevents.*"))


def _purge_steps(path: Path) -> list[int]:
    """Steps of the SessionLog START records (TensorBoard's purge marker) in one event file."""
    loader = require("tensorboard.backend.event_processing.event_file_loader")
    event_pb2 = require("tensorboard.compat.proto.event_pb2")
    return [e.step for e in loader.EventFileLoader(str(path)).Load()
            if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START]


def test_resume_from_an_earlier_checkpoint_continues_the_curve_without_repeats(run, tmp_path):
    """As after a kill past the epoch-1 checkpoint: epoch 2's steps were logged, then the run
    resumes from epoch-1. The new file purges from step S+1, so each step reads back once,
    in order, with the same values (the resume is exact)."""
    s = steps_per_epoch(run)
    again = _copy(run, tmp_path)
    r = run_cli_subprocess(*train_args(again, "--resume", str(again / "epoch-1.safetensors")))
    assert r.returncode == 0, r.stderr
    files = _event_files(again / "tb")
    assert len(files) == 2
    assert _purge_steps(files[1]) == [s + 1]
    got, ref = scalars(again / "tb"), scalars(run / "tb")
    assert [st for st, _ in got["train/loss"]] == list(range(1, 2 * s + 1))
    assert got["train/loss"] == ref["train/loss"]
    assert [st for st, _ in got["val/acc"]] == [s, 2 * s]
    assert [v for _, v in got["val/acc"]] == [v for _, v in ref["val/acc"]]


@pytest.mark.slow  # the resume from an earlier checkpoint above covers the purge in the default suite
def test_sigint_then_resume_continues_the_same_curves(run, tmp_path):
    """Ctrl-C at the first step (checkpoint at step 1), resume: one curve, equal to the
    uninterrupted run's, step for step."""
    out = tmp_path / "run"
    proc = cli_popen(*train_args(out), env={"AUTOTRAIN_FAULT_WRITE_SLEEP": "0.2"})
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob(".config.yaml.tmp-*"))):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before config.yaml was written"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert [st for st, _ in scalars(out / "tb")["train/loss"]] == [1]  # closed and flushed on the way out
    r = run_cli_subprocess(*train_args(out, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert _purge_steps(_event_files(out / "tb")[-1]) == [2]
    got, ref = scalars(out / "tb"), scalars(run / "tb")
    for tag in ("train/loss", "train/lr", "val/acc", "val/loss", "epoch/train_loss"):
        assert got[tag] == ref[tag], tag
