"""``autotrain report RUN_DIR``: read the run, evaluate its checkpoint the way ``autotrain
evaluate`` does (train.inference.evaluate_checkpoint, one code path), draw, write one folder.

Nothing is written until everything has been read, evaluated and drawn; then only OUT
(default RUN_DIR/report) is created and written, each file atomically.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, OutputError
from ..io.checkpoint import unwritable_folder
from .rundir import best_epoch, read_run

INSTALL_HINT = "pip install 'autotrain[report]'"
FILES = ("curves.png", "confusion.png", "per_class.png", "mistakes.png", "index.html")
MISTAKES_SHOWN = 24


@dataclass
class ReportResult:
    out: Path
    files: list[Path]
    checkpoint: Path
    accuracy: float
    count: int
    split: str
    seconds: float  # reading, evaluating, drawing and writing everything


def require_report_dependencies() -> None:
    """ConfigError (exit 2) with the pip command when matplotlib is missing; called before a
    run with output.report starts, so a long run does not end in an error."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"report: needs the matplotlib package, which is not installed: {INSTALL_HINT}") from None


def _check_out(out: Path) -> None:
    problem = unwritable_folder(out)
    if problem is not None:
        raise ConfigError(f"report output {out}: {problem}")


def _position(meta: dict) -> str:
    pos = meta.get("position") or {}
    per_epoch = (meta.get("schedule") or {}).get("steps_per_epoch", "?")
    if pos.get("batch"):
        return f"in epoch {pos['epoch'] + 1} after batch {pos['batch']} of {per_epoch} (global step {meta.get('step')})"
    return f"after epoch {pos.get('epoch')} (global step {meta.get('step')})"


def _run_status(done: int, epochs: int) -> str:
    # From metrics.csv, not the checkpoint: best.safetensors was written before the run ended.
    if done >= epochs:
        return f"finished ({done} of {epochs} epochs)"
    return f"stopped after {done} of {epochs} epochs (interrupted, or still running)"


def _machine(matplotlib_version: str) -> list[tuple[str, str]]:
    import numpy

    return [("autotrain", __version__), ("python", platform.python_version()), ("numpy", numpy.__version__),
            ("matplotlib", matplotlib_version), ("platform", platform.platform()),
            ("processor", platform.machine() + (f", {os.cpu_count()} logical CPUs" if os.cpu_count() else ""))]


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> ReportResult:
    """Write curves.png, confusion.png, per_class.png, mistakes.png and index.html for the
    run in ``run_dir`` into ``out`` (default ``run_dir/report``).

    The checkpoint evaluated is best.safetensors, else last.safetensors (an interrupted run),
    on the validation split of the checkpoint's config. Errors: ConfigError (exit 2) for a
    folder that is not a run, a damaged metrics.csv or an unusable OUT; WeightsError (3) for
    a missing or corrupt checkpoint; DatasetError (4) when the run's data cannot be loaded;
    OutputError (6) when OUT cannot be written.
    """
    start = time.perf_counter()
    require_report_dependencies()
    import matplotlib

    from ..config import config_to_yaml
    from ..io.checkpoint import atomic_write_bytes
    from ..train.inference import evaluate_checkpoint, load_trained
    from . import figures
    from .html import Picture, render_page

    run = read_run(Path(run_dir))
    out = Path(out) if out is not None else run.path / "report"
    _check_out(out)
    trained = load_trained(str(run.checkpoint))
    ev = evaluate_checkpoint(trained)
    meta = trained.checkpoint.metadata
    names = [str(n) for n in ev.class_names]
    best = best_epoch(run.history)

    wrong = int((ev.predictions != ev.labels).sum())
    shown = min(wrong, MISTAKES_SHOWN)
    pictures = [
        Picture("Training curves", "curves.png", figures.to_png(figures.curves_figure(run.history, best)),
                "Per epoch, from metrics.csv; the dashed line marks the epoch with the best validation accuracy."),
        Picture("Confusion matrix", "confusion.png", figures.to_png(figures.confusion_figure(ev.confusion, names)),
                f"{run.checkpoint.name} on the {ev.split} split ({ev.count} images); rows: true class."),
        Picture("Precision and recall per class", "per_class.png",
                figures.to_png(figures.per_class_figure(ev.precision, ev.recall, names))),
        Picture("Most confident mistakes", "mistakes.png",
                figures.to_png(figures.mistakes_figure(ev.images, ev.labels, ev.predictions, ev.probabilities,
                                                       names, MISTAKES_SHOWN)),
                f"{shown} of the {wrong} misclassified {ev.split} images, most confident first: "
                "true class, predicted class and the probability given to it."),
    ]
    best_row = next((r for r in run.history if r["epoch"] == best), None)
    facts = [(f"accuracy on {ev.count} {ev.split} images", f"{ev.accuracy:.4f}"),
             ("loss", f"{ev.loss:.4f}"),
             ("best epoch (val acc)", "-" if best_row is None else f"{best} ({best_row['val_acc']:.4f})"),
             ("epochs in metrics.csv", str(len(run.history))),
             ("training time", f"{sum(r.get('seconds') or 0.0 for r in run.history):.1f} s"),
             ("classes", str(len(names)))]
    checkpoint_rows = [("file", str(run.checkpoint)), ("position", _position(meta)),
                       ("run", _run_status(len(run.history), trained.config.train.epochs)),
                       ("best val_acc recorded", "-" if meta.get("best_val_acc") is None
                        else f"{meta['best_val_acc']:.4f}"),
                       ("written by", f"autotrain {meta.get('version')}"),
                       ("content sha256", trained.checkpoint.sha256),
                       ("parameters", f"{sum(int(p.data.size) for p in trained.model.parameters()):,}"),
                       ("classes", ", ".join(names))]
    config_text = run.config_text if run.config_text is not None else config_to_yaml(trained.config)
    seconds = time.perf_counter() - start
    page = render_page(
        title=f"autotrain report: {run.path}", subtitle=f"{run.checkpoint.name} evaluated on the {ev.split} split",
        facts=facts, pictures=pictures, history=run.history, best=best, config_text=config_text,
        checkpoint=checkpoint_rows, machine=_machine(matplotlib.__version__),
        footer=f"Read, evaluated and drawn in {seconds:.2f} s on {time.strftime('%Y-%m-%d %H:%M:%S')}.")

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {out}: {err.strerror or err}") from None
    written = []
    for p in pictures:
        atomic_write_bytes(out / p.file_name, p.png)
        written.append(out / p.file_name)
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    written.append(out / "index.html")
    return ReportResult(out, written, run.checkpoint, ev.accuracy, ev.count, ev.split, time.perf_counter() - start)
