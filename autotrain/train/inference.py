"""Using a finished checkpoint: rebuild its model, evaluate it on data, predict images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..autograd.function import no_grad
from ..autograd.tensor import Tensor
from ..config import Config
from ..data import BatchLoader, load_image, normalize_own
from ..io.checkpoint import Checkpoint, load_checkpoint
from .loop import confusion_matrix, evaluate, per_class_precision_recall
from .run import EVAL_BATCH, load_data
from .setup import checkpoint_config, load_model_state, model_from_config


@dataclass
class Trained:
    model: nn.Module
    config: Config
    checkpoint: Checkpoint
    path: str


def load_trained(path: str) -> Trained:
    """The model of a checkpoint, in eval mode, with its weights loaded (WeightsError if unusable)."""
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    model = model_from_config(cfg.model)
    load_model_state(model, ckpt.model_state, path)
    model.eval()
    return Trained(model, cfg, ckpt, str(path))


@dataclass
class EvalReport:
    loss: float
    accuracy: float
    count: int
    class_names: list
    confusion: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    # Per image, in the split's order (what a report needs to show the mistakes):
    images: np.ndarray | None = field(default=None, repr=False)         # (N, C, S, S) 0..1, not normalised
    labels: np.ndarray | None = field(default=None, repr=False)         # (N,)
    predictions: np.ndarray | None = field(default=None, repr=False)    # (N,)
    probabilities: np.ndarray | None = field(default=None, repr=False)  # (N, classes) softmax
    split: str = "validation"  # or "train" when the data has no validation split


def evaluate_checkpoint(trained: Trained, cfg: Config | None = None) -> EvalReport:
    """Accuracy, per-class precision/recall and the confusion matrix on the validation split
    of ``cfg``'s data (default: the checkpoint's own config), normalised as in training."""
    cfg = cfg or trained.config
    data = load_data(cfg)
    norm = trained.checkpoint.metadata["normalisation"]
    x, y = (data.val_x, data.val_y) if len(data.val_y) else (data.train_x, data.train_y)
    result = evaluate(trained.model, BatchLoader(x, y, EVAL_BATCH, norm["mean"], norm["std"], shuffle=False),
                      probabilities=True)
    counts = confusion_matrix(result.predictions, result.labels, cfg.model.num_classes)
    precision, recall = per_class_precision_recall(counts)
    return EvalReport(result.loss, result.accuracy, int(len(y)), trained.checkpoint.metadata["class_names"],
                      counts, precision, recall, x, result.labels, result.predictions, result.probabilities,
                      "validation" if len(data.val_y) else "train")


def predict(trained: Trained, images: list[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image file."""
    meta = trained.checkpoint.metadata
    size, channels = meta["image_size"], meta["in_channels"]
    x = np.stack([load_image(p, size, channels) for p in images])
    x = normalize_own(x, meta["normalisation"]["mean"], meta["normalisation"]["std"])
    with no_grad():
        probs = nn.functional.softmax(trained.model(Tensor(x)), dim=1).data
    names = meta["class_names"]
    k = min(top_k, probs.shape[1])
    out = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:k]
        out.append([(names[i], float(row[i])) for i in best])
    return out
