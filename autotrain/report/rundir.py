"""Reading a run folder for a report: metrics.csv, config.yaml and the checkpoint to evaluate.

Everything is checked before the report computes or writes anything: a folder that is not a
run, or a damaged metrics.csv, is a usage error (exit 2); a missing or unreadable checkpoint
is a checkpoint error (exit 3), as README's exit-code table says.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, WeightsError
from ..io.checkpoint import BEST_NAME, LAST_NAME

# The columns a report draws; metrics.csv holds these and the timing ones (train.run).
REQUIRED_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


@dataclass
class RunFolder:
    path: Path
    history: list[dict]           # metrics.csv rows: int epoch, floats, None for an empty cell
    config_text: str | None       # config.yaml as written by the run (None if absent)
    checkpoint: Path              # best.safetensors, else last.safetensors (an interrupted run)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv as rows of numbers. ConfigError naming the file and line for a missing
    column, a short or truncated row (a file cut mid-line), or a value that is no number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (not a run folder, or no epoch has finished yet)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    lines = text.splitlines()
    if not lines:
        raise ConfigError(f"{path}: is empty")
    # The run writes every line whole with a newline (atomically): a last line without one
    # is a file cut short, whose numbers cannot be trusted even when they parse.
    if not text.endswith("\n"):
        raise ConfigError(f"{path}:{len(lines)}: last line is truncated (no end of line)")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"{path}:1: missing column(s) {', '.join(missing)}")
    rows = []
    for number, fields in enumerate(reader, start=2):
        if len(fields) != len(header):
            raise ConfigError(f"{path}:{number}: {len(fields)} fields, the header has {len(header)} (truncated row?)")
        row = {}
        for name, value in zip(header, fields):
            try:
                row[name] = None if value == "" else float(value)
            except ValueError:
                raise ConfigError(f"{path}:{number}: {name} {value!r} is not a number") from None
        if row["epoch"] is None or not float(row["epoch"]).is_integer():
            raise ConfigError(f"{path}:{number}: epoch {row['epoch']!r} is not a whole number")
        row["epoch"] = int(row["epoch"])
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: holds no epoch (only a header)")
    return rows


def best_epoch(history: list[dict]) -> int | None:
    """The first epoch with the highest val_acc (the one best.safetensors holds); None when
    no epoch was evaluated."""
    scored = [(r["val_acc"], -r["epoch"]) for r in history
              if r.get("val_acc") is not None and not math.isnan(r["val_acc"])]
    return -max(scored)[1] if scored else None


def read_run(run_dir: Path) -> RunFolder:
    """The run folder's files, checked; the checkpoint is best.safetensors, else last (a run
    stopped before any improvement was recorded). The checkpoint's content is read later."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a folder (expected a run folder written by autotrain train)")
    history = read_metrics(run_dir / "metrics.csv")
    config_file = run_dir / "config.yaml"
    config_text = config_file.read_text() if config_file.is_file() else None
    for name in (BEST_NAME, LAST_NAME):
        if (run_dir / name).is_file():
            return RunFolder(run_dir, history, config_text, run_dir / name)
    raise WeightsError(f"{run_dir}: no checkpoint to evaluate (neither {BEST_NAME} nor {LAST_NAME})")
