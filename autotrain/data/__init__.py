"""Datasets and the batch loader.

``load_dataset`` turns a source (the built-in ``digits``, an ``idx`` folder, an
``imagefolder`` tree, or an ``npz`` file) into float32 NCHW train/validation splits with
train-only per-channel statistics; ``BatchLoader`` yields seeded, optionally augmented,
normalised batches; ``load_image`` decodes one file for ``autotrain predict``. Every data
problem raises ``autotrain.errors.DatasetError`` (exit 4) with one line naming the file
or folder at fault.
"""

from autotrain.data.dataset import SOURCES, DatasetSplits, load_dataset, resolve_classes, split_indices
from autotrain.data.images import IMAGE_EXTENSIONS, load_image
from autotrain.data.loader import AugmentSpec, BatchLoader, horizontal_flip, normalize_own, random_crop

__all__ = [
    "SOURCES",
    "IMAGE_EXTENSIONS",
    "AugmentSpec",
    "BatchLoader",
    "normalize_own",
    "DatasetSplits",
    "horizontal_flip",
    "load_dataset",
    "load_image",
    "random_crop",
    "resolve_classes",
    "split_indices",
]
