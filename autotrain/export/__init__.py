"""Deploy a trained model: ONNX for runtimes (:func:`export_onnx`), torch ``.pth`` for torch
users (:func:`convert_weights` with an OUT ending in ``.pth``).

Reads checkpoints with :func:`autotrain.train.inference.load_trained` and weights files with
:func:`autotrain.io.weights.load_weights`; writes every file through io's atomic writer, so
OUT is either untouched or whole. Never imported by train. Errors: WeightsError (exit 3) for
an input that is not a checkpoint or not a ResNet-18; ConfigError (exit 2) for a bad option
or a missing ``onnx`` package; OutputError (exit 6) when OUT cannot be written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotrain.errors import ConfigError, WeightsError

DEFAULT_OPSET = 17  # onnx_graph.DEFAULT_OPSET, repeated so the CLI need not import onnx to show it
WEIGHTS_FORMATS = (".safetensors", ".npz", ".pth")
_METADATA_KEYS = ("normalisation", "class_names", "image_size", "in_channels")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: ``batch`` None means a dynamic batch dimension."""

    path: str
    opset: int
    batch: int | None
    raw_pixels: bool
    input_shape: tuple
    num_classes: int
    num_nodes: int
    num_bytes: int


def parse_batch(text: str) -> int | None:
    """``--batch``: a positive integer, or ``dynamic`` (None); ConfigError otherwise."""
    if text.strip().lower() == "dynamic":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--batch {text}: expected a positive integer or 'dynamic'")
    return n


def _checkpoint_metadata(metadata: dict, path: str) -> dict:
    missing = [k for k in _METADATA_KEYS if k not in metadata]
    if missing:
        raise WeightsError(f"{path}: checkpoint metadata lacks {', '.join(missing)} (not written by autotrain train?)")
    return metadata


def export_onnx(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, opset: int | None = None,
                batch: int | None = None, raw_pixels: bool = False) -> OnnxExport:
    """Write ``checkpoint``'s network in eval mode to ``out`` as ONNX (see
    :mod:`autotrain.export.onnx_graph` for the graph's contract). ``raw_pixels`` puts the
    run's normalisation in the graph. ``metadata_props``: class_names, image_size,
    in_channels, mean, std (JSON), raw_pixels, autotrain_version, checkpoint_sha256, config (JSON).
    """
    from autotrain import __version__
    from autotrain.config import config_to_dict
    from autotrain.io.checkpoint import atomic_write_bytes
    from autotrain.train.inference import load_trained

    from .onnx_graph import build_model, check_opset

    opset = DEFAULT_OPSET if opset is None else opset
    check_opset(opset)  # usage errors (and a missing onnx) before a large checkpoint is read
    try:
        trained = load_trained(str(checkpoint))
    except WeightsError as err:  # io's message names the file; say what export expected there
        raise WeightsError(f"{err} (export needs a checkpoint written by autotrain train)") from None
    meta = _checkpoint_metadata(trained.checkpoint.metadata, str(checkpoint))
    norm = meta["normalisation"]
    props = {
        "class_names": json.dumps(meta["class_names"]),
        "image_size": str(meta["image_size"]),
        "in_channels": str(meta["in_channels"]),
        "mean": json.dumps(norm["mean"]),
        "std": json.dumps(norm["std"]),
        "raw_pixels": json.dumps(raw_pixels),
        "autotrain_version": __version__,
        "checkpoint_sha256": trained.checkpoint.sha256,
        "config": json.dumps(config_to_dict(trained.config)),
    }
    proto = build_model(trained.model, image_size=int(meta["image_size"]), in_channels=int(meta["in_channels"]),
                        opset=opset, batch=batch, normalisation=norm if raw_pixels else None,
                        metadata=props, producer_version=__version__)
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return OnnxExport(str(out), opset, batch, raw_pixels, tuple(d.dim_param or d.dim_value for d in dims),
                      trained.model.fc.out_features, len(proto.graph.node), len(data))


def convert_weights(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Convert a weights file or checkpoint ``src`` (any readable format) to ``dst``, chosen
    by extension: ``.safetensors`` or ``.npz`` (any state dict), or ``.pth`` (torch's zip
    format, readable by ``torch.load(weights_only=True)``; only a ResNet-18 state dict,
    which torchvision's resnet18 loads strictly). Optimizer tensors never travel. Returns
    the tensors written. ConfigError for another extension, before anything is read.
    """
    from autotrain.io.weights import convert, load_weights

    from .architecture import resnet18_state
    from .torch_zip import write_pth

    suffix = Path(dst).suffix.lower()
    if suffix not in WEIGHTS_FORMATS:
        shown = suffix or "(no extension)"
        raise ConfigError(f"{dst}: unsupported weights format {shown!r}; use one of {', '.join(WEIGHTS_FORMATS)}")
    if suffix != ".pth":
        return convert(src, dst)
    state = resnet18_state(load_weights(src), str(src))
    write_pth(state, dst, str(src))
    return state
