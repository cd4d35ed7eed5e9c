"""Build ``datasets/fashion_5to9/``: the few-label target task that ships with autotrain.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence, Zalando SE) classes 5-9 (sandal,
shirt, sneaker, bag, ankle boot), which the shipped backbone (pretrained on classes 0-4 by
``configs/fashion_pretrain.yaml``) has never seen:

  train-*-idx?-ubyte.gz   PER_CLASS_TRAIN (20) images per class, drawn from the 30,000
                          Fashion-MNIST *training* images of classes 5-9
  t10k-*-idx?-ubyte.gz    PER_CLASS_VAL (400) images per class from the *t10k* file:
                          the held-out validation split (autotrain's idx source uses t10k
                          files as the validation split)

Images stay 28x28 uint8 and labels keep their Fashion-MNIST numbers 5..9 (the finetune
config selects and relabels them with ``data.classes``). The draw is seeded
(``numpy.random.default_rng(SEED)``, per class, without replacement) and the gzip streams carry
no timestamp, so the same source files always give byte-identical output. The licence
notice that travels with the files is ``datasets/fashion_5to9/LICENSE.txt`` (kept by hand).

Usage:
  apt-get install dataset-fashion-mnist
  python scripts/make_fashion_subset.py [SOURCE_DIR] [--out datasets/fashion_5to9]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from autotrain.data.idx import read_idx_split  # noqa: E402  (the checkout's reader)

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = ROOT / "datasets" / "fashion_5to9"
CLASSES = (5, 6, 7, 8, 9)
PER_CLASS_TRAIN = 20
PER_CLASS_VAL = 400
SEED = 0


def pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` randomly drawn samples of each class in CLASSES."""
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in CLASSES]
    return np.sort(np.concatenate(chosen))


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080<ndim>, big-endian sizes, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_gz(path: Path, data: bytes) -> None:
    # mtime=0 and no file name in the header: reproducible bytes.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=9) as stream:
        stream.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", PER_CLASS_TRAIN), ("t10k", PER_CLASS_VAL)):
        found = read_idx_split(args.source, split)
        if found is None:
            print(f"{args.source}: no {split} IDX files", file=sys.stderr)
            return 1
        keep = pick(found.labels, per_class, rng)
        for kind, array in (("images", found.images[keep]), ("labels", found.labels[keep])):
            ndim = 3 if kind == "images" else 1
            path = args.out / f"{split}-{kind}-idx{ndim}-ubyte.gz"
            write_gz(path, idx_bytes(array))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                  f"{array.shape}, {path.stat().st_size} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
