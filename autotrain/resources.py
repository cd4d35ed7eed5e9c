"""Files that ship with autotrain (configs/, weights/, datasets/), found from any working folder.

In a source checkout they are the top-level ``configs/``, ``weights/`` and ``datasets/``; in an
installed wheel they are package data under ``autotrain/_configs``, ``autotrain/_weights`` and
``autotrain/_datasets``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGED = {"configs": "_configs", "weights": "_weights", "datasets": "_datasets"}


def shipped_file(relative: str | Path) -> Path | None:
    """The shipped file ``configs/<name>`` or ``weights/<name>``, or None when there is none."""
    return _shipped(relative, folder=False)


def shipped_folder(relative: str | Path) -> Path | None:
    """The shipped folder ``datasets/<name>``, or None when there is none."""
    return _shipped(relative, folder=True)


def resolve_data_path(path: str) -> str:
    """``data.path`` as given if it exists, else the shipped dataset of that name
    (``datasets/fashion_5to9`` from any folder after install), else as given (the data source
    then reports it missing, naming the path the user wrote)."""
    if Path(path).exists():
        return path
    shipped = shipped_folder(path) or shipped_file(path)
    return str(shipped) if shipped is not None else path


def _shipped(relative: str | Path, folder: bool) -> Path | None:
    parts = Path(relative).parts
    if len(parts) < 2 or parts[0] not in _PACKAGED:
        return None
    packaged = resources.files("autotrain").joinpath(_PACKAGED[parts[0]], *parts[1:])
    if (packaged.is_dir() if folder else packaged.is_file()):
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[1].joinpath(*parts)
    return checkout if (checkout.is_dir() if folder else checkout.is_file()) else None


def shipped_names(folder: str, pattern: str = "*") -> list[str]:
    """The names of the shipped files in ``folder`` ("configs" or "weights") matching
    ``pattern``: the package data's in a wheel, the checkout's in a source tree."""
    packaged = resources.files("autotrain").joinpath(_PACKAGED[folder])
    if packaged.is_dir():
        root = Path(str(packaged))
    else:
        root = Path(__file__).resolve().parents[1] / folder
    return sorted(p.name for p in root.glob(pattern) if p.is_file())
