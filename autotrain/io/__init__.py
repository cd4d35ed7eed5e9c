"""Weights and checkpoint files: safetensors, torch ``.pth`` without pickle execution, ``.npz``.

Nothing here needs the autograd engine: everything works on ``dict[str, np.ndarray]``
state dicts with torchvision key names. Errors: WeightsError (exit 3) for a file that
cannot be read safely, OutputError (exit 6) for a write that failed.
"""

from autotrain.io.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    Checkpoint,
    atomic_write_bytes,
    clean_stale_temp_files,
    epoch_checkpoint_name,
    find_latest_valid_checkpoint,
    latest_valid_checkpoint,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from autotrain.io.safetensors_io import read_safetensors, read_safetensors_metadata, safetensors_bytes
from autotrain.io.torch_pth import read_pth
from autotrain.io.weights import LoadReport, convert, load_weights, match_state_dict, save_weights

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "Checkpoint",
    "LoadReport",
    "atomic_write_bytes",
    "clean_stale_temp_files",
    "convert",
    "epoch_checkpoint_name",
    "find_latest_valid_checkpoint",
    "latest_valid_checkpoint",
    "load_checkpoint",
    "load_weights",
    "match_state_dict",
    "read_pth",
    "read_safetensors",
    "read_safetensors_metadata",
    "rotate_checkpoints",
    "safetensors_bytes",
    "save_checkpoint",
    "save_weights",
]
