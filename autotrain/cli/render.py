"""Everything the CLI shows: a rich Reporter for runs, and the tables of the other commands.

The library reports through ``Reporter`` callbacks and returns data; only this module prints.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..train.loop import Reporter
from ..train.run import METRIC_COLUMNS

# soft_wrap: a message stays one line in a pipe or log (no newline inserted inside a path);
# tables are printed with soft_wrap=False so they still fit the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


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


def confusion_table(counts, class_names, precision, recall) -> Table:
    t = Table(title="confusion matrix (rows: true, columns: predicted)")
    t.add_column("true \\ pred")
    for name in class_names:
        t.add_column(escape(name), justify="right")
    t.add_column("precision", justify="right")
    t.add_column("recall", justify="right")
    for i, name in enumerate(class_names):
        t.add_row(escape(name), *(str(int(v)) for v in counts[i]), _fmt(float(precision[i]), 3), _fmt(float(recall[i]), 3))
    return t
