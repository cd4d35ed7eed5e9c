"""Datasets and the batch loader.

``load_dataset`` turns a source (the built-in ``digits``, an ``idx`` folder, an
``imagefolder`` tree, or an ``npz`` file) into NCHW train/validation splits with
train-only per-channel statistics: float32 arrays in RAM, or for the imagefolder uint8
``ImageRows`` decoded once into a memory-mapped cache file (``data.cache``, see
``autotrain.data.cache``); ``BatchLoader`` yields seeded, optionally augmented,
normalised float32 batches, whole or as a shard of a global batch; ``load_image`` decodes
one file for ``autotrain predict``. Every data problem raises
``autotrain.errors.DatasetError`` (exit 4) with one line naming the file or folder at fault.
"""

from autotrain.data.cache import ImageRows, default_cache_dir
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
    "ImageRows",
    "default_cache_dir",
    "horizontal_flip",
    "load_dataset",
    "load_image",
    "random_crop",
    "resolve_classes",
    "split_indices",
]
