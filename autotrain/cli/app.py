"""The ``autotrain`` command: a thin typer shell over the library.

Each command parses its options, calls the library, and renders the result; library errors
carry their exit code (see README, "Exit codes") and are shown as one line per problem.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import AutotrainError, ConfigError, OutputError
from . import render

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and finetune ResNet-18 classifiers with a NumPy autograd engine.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: --set optimizer.lr=0.1 (repeatable).")]
ResumeOpt = Annotated[Optional[str], typer.Option("--resume", help="Continue from a checkpoint: a path, or 'auto' for the newest valid one in output.dir.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Start over in an output.dir that already holds a run.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; only the summary line.")]
NprocOpt = Annotated[int, typer.Option("--nproc", min=1, help="Train as N data-parallel MPI processes (starts mpiexec -n N; needs autotrain[mpi]).")]
ReportOpt = Annotated[bool, typer.Option("--report", help="Write RUN_DIR/report/ (figures, index.html) when the run ends (output.report).")]


def _print_error(err: AutotrainError) -> None:
    for line in str(err).splitlines() or [type(err).__name__]:
        render.err_console.print(f"[red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)


def _fail(err: AutotrainError) -> None:
    _print_error(err)
    raise typer.Exit(err.exit_code)


@contextmanager
def _errors():
    """Turn library errors into their documented exit codes."""
    try:
        yield
    except AutotrainError as err:
        _fail(err)


def _write_output(path: Path, text: str) -> None:
    """Write a report the user asked for; exit 2 naming it when it cannot be written."""
    try:
        path.write_text(text)
    except OSError as err:
        _fail(ConfigError(f"{path}: cannot write it ({err.strerror or err})"))


@contextmanager
def _stop_signals():
    """SIGINT/SIGTERM only set a flag; the run checkpoints at the next step and exits 130/143.

    typer would turn Ctrl-C into exit 1 and Python's default SIGTERM runs no cleanup, so the
    handlers are explicit. A second signal changes nothing: the checkpoint write finishes.
    """
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _config_path(config: Path) -> Path:
    """The file as given; else a shipped config of that name (``configs/digits.yaml`` works
    from any folder after install)."""
    from ..resources import shipped_file

    path = Path(config)
    if path.exists() or path.parts not in ((path.name,), ("configs", path.name)):
        return path  # a path into some other folder means that file: missing is an error
    return shipped_file(Path("configs") / path.name) or path


def _load(config: Path, overrides: list[str] | None):
    from ..config import load_config

    return load_config(_config_path(config), overrides or [])


def _relaunch_under_mpiexec(nproc: int) -> None:
    """--nproc N: run this very command as N MPI ranks (as torchrun does for torch users);
    mpiexec replaces this process, so signals and the exit code are the job's."""
    from .. import distributed

    with _errors():
        if distributed.launched_size() > 1:
            raise ConfigError(f"--nproc {nproc}: already running under mpiexec "
                              f"({distributed.launched_size()} processes); leave --nproc out")
        args, skip = [], False
        for a in sys.argv[1:]:
            if skip or a.startswith("--nproc="):
                skip = False
                continue
            if a == "--nproc":
                skip = True
                continue
            args.append(a)
        argv = distributed.mpiexec_argv(nproc, args)
    sys.stdout.flush()
    os.execv(argv[0], argv)


def _train(config_path: Path, overrides: list[str] | None, resume: str | None, overwrite: bool, quiet: bool,
           nproc: int = 1) -> None:
    import numpy as np

    from .. import distributed
    from ..errors import NumericalError
    from ..train.run import Interrupted, Trainer

    if nproc > 1:
        _relaunch_under_mpiexec(nproc)
    with _errors():
        comm = distributed.init()
    if not comm.is_writer:
        render.silence()  # rank 0 alone prints: progress, the summary and any error line
    with _errors():
        cfg = _load(config_path, overrides)
        if cfg.output.report:  # a missing extra is said now, not after a long run
            from ..report import require_report_dependencies

            require_report_dependencies()
        reporter = render.RichReporter(quiet=quiet)
        with _stop_signals() as should_stop:
            trainer = Trainer(cfg, resume=resume, overwrite=overwrite, reporter=reporter,
                              should_stop=should_stop, config_dir=_config_path(config_path).parent, comm=comm)
            start = time.perf_counter()
            try:
                # The run checks loss and weights itself and stops with one line naming the
                # epoch and step (exit 5); numpy's overflow warnings would only add noise.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    try:
                        result = trainer.run()
                    except (Interrupted, NumericalError):
                        raise  # agreed by every rank at the same step: each ends with it
                    except AutotrainError as err:
                        # An error a rank may meet alone (rank 0's writes, one host's data):
                        # the others would wait for it in their next collective, so the whole
                        # job ends with its exit code. Rank 0 prints its line at once; another
                        # rank first gives rank 0 time to report the same error and end the
                        # job, and prints its own if it is still running (it met it alone).
                        if comm.size > 1:
                            if not comm.is_writer:
                                time.sleep(2)
                                render.unsilence_errors()
                            _print_error(err)
                            comm.abort(err.exit_code)
                        raise
                    except Exception:
                        if comm.size > 1:  # a failure of this rank alone: do not leave the others waiting
                            traceback.print_exc()
                            comm.abort(1)
                        raise
            finally:
                reporter.close()
        if result.history and not quiet:
            render.console.print(render.history_table(result.history), soft_wrap=False)
        best = "-" if result.best_val_acc is None else f"{result.best_val_acc:.4f}"
        ranks = f", {comm.describe()}" if comm.size > 1 else ""  # one process: the line as it always was
        render.console.print(f"{result.status}: {result.run_dir} (best val_acc {best}, "
                             f"{time.perf_counter() - start:.1f} s{ranks})", markup=False)
    if cfg.output.report and comm.is_writer:
        _report(result.run_dir, None)


@app.command()
def train(config: Annotated[Path, typer.Argument(help="YAML config file.")],
          set_: SetOpt = None, resume: ResumeOpt = None, overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
          report: ReportOpt = False, nproc: NprocOpt = 1):
    """Train from a config, writing checkpoints and metrics.csv to output.dir."""
    _train(config, list(set_ or []) + (["output.report=true"] if report else []), resume, overwrite, quiet, nproc)


@app.command()
def finetune(config: Annotated[Optional[Path], typer.Argument(help="YAML config (default: the shipped configs/finetune.yaml).")] = None,
             freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Freeze everything but the head (fc).")] = False,
             weights: Annotated[Optional[str], typer.Option("--weights", help="Pretrained weights (.safetensors, .pth, .npz, checkpoint).")] = None,
             num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="Classes of the new head.")] = None,
             set_: SetOpt = None, resume: ResumeOpt = None, overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
             report: ReportOpt = False, nproc: NprocOpt = 1):
    """Finetune pretrained weights: load, replace the head, freeze, train what is left."""
    from ..config import default_config_path

    with _errors():
        path = config or default_config_path("finetune.yaml")
    overrides = list(set_ or [])
    if freeze_backbone:
        overrides.append("finetune.freeze_backbone=true")
    if weights is not None:
        overrides.append(f"model.weights={json.dumps(weights)}")
    if num_classes is not None:
        overrides.append(f"model.num_classes={num_classes}")
    if report:
        overrides.append("output.report=true")
    _train(path, overrides, resume, overwrite, quiet, nproc)


def _report(run_dir: Path, out: Path | None) -> None:
    from ..report import write_report

    with _errors():
        r = write_report(run_dir, out)
    render.console.print(f"report: {r.out / 'index.html'} ({r.checkpoint.name}: accuracy {r.accuracy:.4f} on "
                         f"{r.count} {r.split} images; {len(r.files)} files, {r.seconds:.1f} s)", markup=False)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder (output.dir of train or finetune).")],
           out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder to write (default RUN_DIR/report).")] = None):
    """Curves, confusion matrix, per-class precision/recall, the most confident mistakes and one HTML page."""
    _report(run_dir, out)


@app.command()
def gradcheck(op: Annotated[Optional[list[str]], typer.Option("--op", help="Case name, prefix or glob (repeatable).")] = None,
              json_path: Annotated[Optional[Path], typer.Option("--json", help="Write a report with one entry per case.")] = None,
              eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0):
    """Check every op's gradient in float64 against central differences; exit 1 on a mismatch."""
    from ..checks import run_case, select_cases

    try:
        cases = select_cases(op)
    except KeyError as err:
        _fail(ConfigError(f"--op {err.args[0]}: no such case"))
    start = time.perf_counter()
    results = [run_case(c, eps=eps, atol=atol, rtol=rtol, seed=seed) for c in cases]
    render.console.print(render.gradcheck_table(results), soft_wrap=False)
    failed = [r for r in results if not r.passed]
    for r in failed:
        render.err_console.print(f"[red]FAIL[/] {escape(r.name)}: {escape(str(r.worst))}", highlight=False)
    if json_path is not None:
        report = json.dumps({"eps": eps, "atol": atol, "rtol": rtol, "seed": seed,
                             "cases": [r.as_dict() for r in results]}, indent=2)
        _write_output(json_path, report)
    render.console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed "
                         f"in {time.perf_counter() - start:.1f} s")
    raise typer.Exit(1 if failed else 0)


@app.command()
def graph(output: Annotated[Path, typer.Option("--output", "-o", help=".dot, .svg or .png")] = Path("graph.dot"),
          model: Annotated[bool, typer.Option("--model", help="Draw a tiny ResNet-18's loss instead of Q = 3a^3 - b^2.")] = False):
    """Write the autograd DAG (the tutorial's section 1.5) as Graphviz DOT, or render it."""
    import numpy as np

    from .. import models, nn, tensor
    from ..graph import render as render_graph
    from ..graph import to_dot

    if model:
        net = models.resnet18(num_classes=3, in_channels=1, width=4, stem="small")
        x = tensor(np.zeros((2, 1, 8, 8), np.float32))
        out = nn.functional.cross_entropy(net(x), np.array([0, 1]))
        dot = to_dot(out, {p: n for n, p in net.named_parameters()}, "loss")
    else:
        a = tensor([2.0, 3.0], requires_grad=True)
        b = tensor([6.0, 4.0], requires_grad=True)
        q = 3 * a ** 3 - b ** 2
        dot = to_dot(q, {a: "a", b: "b"}, "Q")
    if not output.parent.is_dir():
        _fail(ConfigError(f"--output {output}: folder {output.parent} does not exist"))
    try:
        written = render_graph(dot, output)
    except FileNotFoundError as err:  # Graphviz's dot is not installed: write the DOT text
        fallback = output.with_suffix(".dot")
        _write_output(fallback, dot + "\n")
        render.err_console.print(f"{err}; wrote DOT to {fallback} instead", markup=False)
        raise typer.Exit(0)
    except (OSError, subprocess.CalledProcessError) as err:
        _fail(OutputError(f"--output {output}: cannot write it ({err})"))
    render.console.print(f"wrote {written}", markup=False)


@config_app.command("show")
def config_show(config: Annotated[Path, typer.Argument(help="YAML config file.")], set_: SetOpt = None):
    """Print the effective config: every default filled, overrides applied."""
    from ..config import config_to_yaml

    with _errors():
        cfg = _load(config, set_)
    render.console.file.write(config_to_yaml(cfg))  # plain text, through the closed-pipe guard


@app.command()
def evaluate(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors) written by train.")],
             set_: SetOpt = None):
    """Accuracy, per-class precision/recall and the confusion matrix on the validation split."""
    from ..config import config_from_dict, config_to_dict, diff_configs
    from ..train.inference import evaluate_checkpoint, load_trained

    with _errors():
        trained = load_trained(str(checkpoint))
        cfg = config_from_dict(config_to_dict(trained.config), str(checkpoint), set_ or [])
        # The checkpoint is the model, and its seed made the train/validation split: --set may
        # only point it at other data (another seed would evaluate on training images).
        changed = diff_configs(trained.config, cfg, ("seed", "model"))
        if changed:
            raise ConfigError([f"--set {f}: evaluate uses the checkpoint's model and seed; only data.* can change"
                               for f in changed])
        report = evaluate_checkpoint(trained, cfg)
    for table in render.confusion_tables(report.confusion, report.class_names, render.console.width):
        render.console.print(table, soft_wrap=False)
    render.console.print(render.per_class_table(report.confusion, report.class_names, report.precision, report.recall),
                         soft_wrap=False)
    render.console.print(f"accuracy {report.accuracy:.4f} loss {report.loss:.4f} on {report.count} images")


@app.command()
def predict(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by train.")],
            images: Annotated[list[Path], typer.Argument(help="Image files.")],
            top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 3):
    """Top-k classes with probabilities for each image."""
    from ..train.inference import load_trained
    from ..train.inference import predict as run_predict

    with _errors():
        trained = load_trained(str(checkpoint))
        results = run_predict(trained, [str(p) for p in images], top_k)
    for path, preds in zip(images, results):
        render.console.print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in preds), highlight=False,
                             markup=False)


@app.command()
def inspect(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by train.")]):
    """Config, position, metrics and parameter counts of a checkpoint."""
    from ..config import config_to_yaml
    from ..train.inference import load_trained

    with _errors():
        trained = load_trained(str(checkpoint))
    meta = trained.checkpoint.metadata
    render.console.print(f"[bold]{escape(str(checkpoint))}[/] autotrain {meta.get('version')} sha256 {trained.checkpoint.sha256[:16]}...")
    pos = meta["position"]  # epochs done, or (mid-epoch) the 0-based epoch in progress and its batches done
    per_epoch = (meta.get("schedule") or {}).get("steps_per_epoch", "?")
    where = (f"in epoch {pos['epoch'] + 1} after batch {pos['batch']} of {per_epoch}" if pos["batch"]
             else f"after epoch {pos['epoch']}")
    render.console.print(f"{where}, step {meta['step']}, "
                         f"finished {meta.get('finished')}, best val_acc {meta.get('best_val_acc')}")
    n = sum(int(p.data.size) for p in trained.model.parameters())
    render.console.print(f"{n:,} parameters; classes {meta['class_names']}", markup=False)
    if meta.get("history"):
        render.console.print(render.history_table(meta["history"], "metrics"), soft_wrap=False)
    render.console.print(config_to_yaml(trained.config), highlight=False, markup=False)


@app.command()
def convert(src: Annotated[Path, typer.Argument(help="Weights in: .pth (zip or legacy), .safetensors, .npz, checkpoint.")],
            dst: Annotated[Path, typer.Argument(help="Weights out, by extension: .safetensors, .npz, or .pth (torch's "
                                                     "zip format; a ResNet-18 that torchvision's resnet18 loads).")]):
    """Convert weights between formats, keeping bare state_dict names (no optimizer tensors)."""
    from ..export import convert_weights

    with _errors():
        tensors = convert_weights(src, dst)
    render.console.print(f"wrote {dst}: {len(tensors)} tensors", markup=False)


@app.command()
def export(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by train.")],
           out: Annotated[Path, typer.Argument(help="The ONNX file to write.")],
           opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset version (default 17).")] = None,
           batch: Annotated[str, typer.Option("--batch", help="Batch size N, or 'dynamic'.")] = "dynamic",
           raw_pixels: Annotated[bool, typer.Option("--raw-pixels", help="Normalise in the graph: the model takes "
                                                    "0..1 pixels, as predict does.")] = False):
    """Export a checkpoint's network (eval mode) to ONNX, with class names and normalisation as metadata."""
    from ..export import export_onnx, parse_batch

    with _errors():
        r = export_onnx(checkpoint, out, opset=opset, batch=parse_batch(batch), raw_pixels=raw_pixels)
    shape = ", ".join(map(str, r.input_shape))
    pixels = "0..1 pixels" if r.raw_pixels else "normalised pixels"
    render.console.print(f"wrote {out}: opset {r.opset}, images [{shape}] ({pixels}) -> logits "
                         f"[{r.input_shape[0]}, {r.num_classes}], {r.num_nodes} nodes, {r.num_bytes:,} bytes",
                         markup=False, highlight=False)


def main() -> None:
    """Console-script entry point."""
    from ..memory import tune_malloc

    tune_malloc()
    app()
