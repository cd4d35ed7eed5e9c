"""Everything the CLI shows: a rich Reporter for runs, and the tables of the other commands.

The library reports through ``Reporter`` callbacks and returns data; only this module prints.
"""

from __future__ import annotations

import math
import os
import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..train.loop import Reporter
from ..train.run import METRIC_COLUMNS

class StdoutUntilClosed:
    """sys.stdout for everything the CLI prints, until its reader goes away.

    ``autotrain train ... | head -1`` closes the pipe after one line; the next write raises
    BrokenPipeError, which would end a training run with nothing but config.yaml written. A
    closed stdout must not cost a run: from the first broken write on, fd 1 points at
    /dev/null (so Python's flush at exit cannot fail either), printing stops silently, and
    the command goes on to its own exit code. Attributes are read from the current
    ``sys.stdout`` at each call, so test runners that swap it still capture the output.
    """

    reader_gone = False

    def write(self, text: str) -> int:
        if not StdoutUntilClosed.reader_gone:
            try:
                return sys.stdout.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not StdoutUntilClosed.reader_gone:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                self._reader_gone()

    @staticmethod
    def _reader_gone() -> None:
        StdoutUntilClosed.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no real fd (a test runner's buffer): nothing to redirect
            pass

    def __getattr__(self, name):
        return getattr(sys.stdout, name)


# soft_wrap: a message stays one line in a pipe or log (no newline inserted inside a path);
# tables are printed with soft_wrap=False so they still fit the width.
console = Console(file=StdoutUntilClosed(), soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def silence() -> None:
    """Print nothing from now on (the ranks of a data-parallel job other than rank 0)."""
    console.quiet = True
    err_console.quiet = True


def unsilence_errors() -> None:
    """Error lines print again: a rank other than 0 reports an error it met alone."""
    err_console.quiet = False


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


class RichReporter(Reporter):
    """Progress bar per epoch with the running loss and accuracy; a line per epoch."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def on_start(self, info: dict) -> None:
        if self.quiet:
            return
        resumed = info["resumed_from"]
        where = f"resumed from {resumed} at epoch {info['position']['epoch'] + 1}" if resumed else "new run"
        console.print(f"[bold]{escape(info['run_dir'])}[/]: {escape(where)}; {info['train_samples']} train / "
                      f"{info['val_samples']} val images, {len(info['classes'])} classes; "
                      f"{info['parameters']:,} parameters ({info['trainable']:,} trainable)"
                      f"{escape(_cache_note((info.get('data_info') or {}).get('cache')))}")
        skipped = (info.get("data_info") or {}).get("skipped_files") or []
        if skipped:
            first = skipped[0]
            console.print(f"[yellow]skipped {len(skipped)} undecodable file(s)[/], first "
                          f"{escape(first['path'])}: {escape(first['reason'])}")
        setup = info["setup"]
        if setup.frozen or setup.load_report is not None:
            self._show_setup(setup, info)

    @staticmethod
    def _show_setup(setup, info: dict) -> None:
        """The finetune tables: parameters per block, and how the weights file loaded."""
        from ..train.setup import parameter_table as counts

        console.print(parameter_table(counts(setup)), soft_wrap=False)
        rep = setup.load_report
        if rep is None:
            return
        console.print(f"weights {setup.weights_path}: {rep.summary()}", markup=False)
        head = [k for k, *_ in rep.mismatched if k.startswith("fc.")]
        if head and setup.head_replaced:
            console.print(f"  expected: fc re-initialised for {info['num_classes']} classes "
                          f"({', '.join(head)} differ in shape)", markup=False)
        elif setup.head_replaced:
            console.print(f"  fc re-initialised from seed {info['seed']} (finetune.replace_head): "
                          "the file's fc, if any, is not used", markup=False)

    def on_message(self, text: str) -> None:
        console.print(text, markup=False)

    def on_data_progress(self, done: int, total: int) -> None:
        """A transient bar with images/s while an image folder decodes."""
        if self.quiet:
            return
        if self.progress is None:
            self._decode_start = time.perf_counter()
            self.progress = Progress(TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                     console=console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("decode", total=total, rate="")
        elapsed = time.perf_counter() - self._decode_start
        rate = f"{done / elapsed:,.0f} img/s" if elapsed > 0 else ""
        self.progress.update(self.task, completed=done, rate=rate)
        if done >= total:
            self.progress.stop()
            self.progress = None

    def on_epoch_start(self, epoch: int, epochs: int, batches: int, start_batch: int) -> None:
        if self.quiet:
            return
        self.progress = Progress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=batches, completed=start_batch, stats="")

    def on_batch_end(self, epoch: int, batch: int, loss: float, acc: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, stats=f"loss {loss:.4f} acc {acc:.3f} lr {lr:.2e}")

    def on_eval_start(self, epoch: int) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_epoch_end(self, row: dict) -> None:
        if self.quiet:
            return
        console.print(f"epoch {row['epoch']}: train loss {_fmt(row['train_loss'])} acc {_fmt(row['train_acc'])} | "
                      f"val loss {_fmt(row['val_loss'])} acc {_fmt(row['val_acc'])} | lr {row['lr']:.3g} | "
                      f"{_fmt(row['images_per_s'], 1)} img/s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _cache_note(cache: dict | None) -> str:
    """The start line's tail saying where decoded images are kept (imagefolder only)."""
    if not cache:
        return ""
    if cache["status"] == "memory":
        return "; images decoded into memory (data.cache off)" if cache["setting"] == "off" \
            else "; images decoded into memory (the cache folder is not writable)"
    size = cache["bytes"]
    shown = f"{size / 1e6:,.1f} MB" if size >= 1e6 else f"{size / 1e3:,.1f} kB"
    return f"; data cache {cache['path']} ({cache['status']}, {shown})"


def history_table(history: list[dict], title: str = "summary") -> Table:
    t = Table(title=title)
    for col in ("epoch", "loss", "acc", "val loss", "val acc", "lr", "img/s", "s"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in history:  # the columns of metrics.csv, in its order
        t.add_row(*(_fmt(row.get(c), {"lr": 6, "images_per_s": 1, "seconds": 2}.get(c, 4)) for c in METRIC_COLUMNS))
    return t


def parameter_table(rows: list[tuple[str, int, int, int]]) -> Table:
    t = Table(title="parameters")
    for col in ("block", "total", "trainable", "frozen"):
        t.add_column(col, justify="right" if col != "block" else "left")
    for name, total, trainable, frozen in rows:
        t.add_row(name, f"{total:,}", f"{trainable:,}", f"{frozen:,}")
    t.add_row("[bold]all[/]", *(f"{sum(r[i] for r in rows):,}" for i in (1, 2, 3)))
    return t


def gradcheck_table(results) -> Table:
    t = Table(title="gradcheck (float64 central differences vs autograd)")
    for col in ("case", "shapes", "elements", "max abs err", "max rel err", "err/tol", "result"):
        t.add_column(col, justify="left" if col in ("case", "shapes", "result") else "right")
    for r in results:
        t.add_row(r.name, r.shapes, str(r.elements), f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}",
                  f"{r.max_tol_ratio:.3f}",
                  "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    return t


def per_class_table(counts, class_names, precision, recall) -> Table:
    """Precision, recall and support per class: four narrow columns, so the numbers users came
    for are never cut, whatever the number of classes or the terminal width."""
    t = Table(title="per class")
    t.add_column("class", overflow="fold")
    for column in ("precision", "recall", "support"):
        t.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for i, name in enumerate(class_names):
        t.add_row(escape(name), _fmt(float(precision[i]), 3), _fmt(float(recall[i]), 3), str(int(counts[i].sum())))
    return t


def confusion_tables(counts, class_names, width: int) -> list[Table]:
    """The confusion matrix as one table, or, when its columns do not fit ``width``, as several
    tables of consecutive predicted classes (each with the true-class column), like a wide
    data frame wrapped: no count is ever cut."""
    names = [str(n) for n in class_names]
    first = max([len("true \\ pred")] + [len(n) for n in names]) + 3  # cell padding and border
    cells = [max(len(n), len(str(int(counts[:, j].max())) if len(counts) else 1)) + 3 for j, n in enumerate(names)]
    groups, current, used = [], [], first + 1
    for j, w in enumerate(cells):
        if current and used + w > width:
            groups.append(current)
            current, used = [], first + 1
        current.append(j)
        used += w
    groups.append(current)
    tables = []
    for k, cols in enumerate(groups):
        part = f" (predicted {names[cols[0]]}..{names[cols[-1]]})" if len(groups) > 1 else ""
        t = Table(title=f"confusion matrix (rows: true, columns: predicted){part}")
        t.add_column("true \\ pred", no_wrap=True)
        for j in cols:
            t.add_column(escape(names[j]), justify="right", no_wrap=True)
        for i, name in enumerate(names):
            t.add_row(escape(name), *(str(int(counts[i, j])) for j in cols))
        tables.append(t)
    return tables
