"""The inner loops: one training step, one pass of evaluation, and the events they report.

Nothing here prints: progress goes to a ``Reporter`` whose methods the CLI implements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..autograd.function import no_grad
from ..autograd.tensor import Tensor
from ..errors import NumericalError

F = nn.functional


class Reporter:
    """Receives progress from a run; every method is optional (the default does nothing)."""

    def on_start(self, info: dict) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_data_progress(self, done: int, total: int) -> None:
        """Image files decoded so far while the data set loads (before ``on_start``)."""
    def on_epoch_start(self, epoch: int, epochs: int, batches: int, start_batch: int) -> None: ...
    def on_batch_end(self, epoch: int, batch: int, loss: float, acc: float, lr: float) -> None:
        """``loss``/``acc``: the epoch's exact running means so far (what its row will show,
        across a mid-epoch resume too)."""
    def on_step(self, step: int, loss: float, lr: float) -> None:
        """After each optimizer step: ``step`` the 1-based global step, ``loss`` that batch's
        mean loss, ``lr`` the base learning rate it used."""
    def on_eval_start(self, epoch: int) -> None: ...
    def on_epoch_end(self, row: dict) -> None: ...
    def on_checkpoint(self, path: str) -> None: ...
    def on_finish(self) -> None:
        """The run stopped (finished, interrupted or failed): release files. Called once."""


class Reporters(Reporter):
    """Several reporters as one: each event goes to each of them, in order. The trainer
    talks to one Reporter, so adding a logger (TensorBoard) changes no call site."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def on_start(self, info):
        for r in self.reporters:
            r.on_start(info)

    def on_message(self, text):
        for r in self.reporters:
            r.on_message(text)

    def on_data_progress(self, done, total):
        for r in self.reporters:
            r.on_data_progress(done, total)

    def on_epoch_start(self, epoch, epochs, batches, start_batch):
        for r in self.reporters:
            r.on_epoch_start(epoch, epochs, batches, start_batch)

    def on_batch_end(self, epoch, batch, loss, acc, lr):
        for r in self.reporters:
            r.on_batch_end(epoch, batch, loss, acc, lr)

    def on_step(self, step, loss, lr):
        for r in self.reporters:
            r.on_step(step, loss, lr)

    def on_eval_start(self, epoch):
        for r in self.reporters:
            r.on_eval_start(epoch)

    def on_epoch_end(self, row):
        for r in self.reporters:
            r.on_epoch_end(row)

    def on_checkpoint(self, path):
        for r in self.reporters:
            r.on_checkpoint(path)

    def on_finish(self):
        for r in self.reporters:
            r.on_finish()


@dataclass
class EpochSums:
    """Running sums of an epoch in progress; saved in a checkpoint taken mid-epoch."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0

    def add(self, loss: float, correct: int, count: int) -> None:
        self.loss += loss * count
        self.correct += correct
        self.seen += count

    @property
    def mean_loss(self) -> float:
        return self.loss / self.seen if self.seen else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")

    def as_dict(self) -> dict:
        return {"loss": self.loss, "correct": self.correct, "seen": self.seen, "seconds": self.seconds}


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    predictions: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)  # (N, classes) softmax, if asked


def train_step(model: nn.Module, optimizer, x: np.ndarray, y: np.ndarray, where: str) -> tuple[float, int]:
    """forward, cross-entropy, backward, SGD step. Returns (loss, correct predictions).

    A non-finite loss stops before backward and the update, so no non-finite weight is
    ever produced from it: NumericalError naming ``where`` (epoch and step).
    """
    logits = model(Tensor(x))
    loss = F.cross_entropy(logits, y)
    value = float(loss.data)
    if not math.isfinite(value):
        raise NumericalError(f"loss is {value} at {where}; stopped before the update (try a lower optimizer.lr)")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    correct = int((logits.data.argmax(axis=1) == y).sum())
    return value, correct


def evaluate(model: nn.Module, loader, probabilities: bool = False) -> EvalResult:
    """Mean loss and accuracy over a loader, under no_grad with the model in eval mode;
    with ``probabilities`` also each sample's softmax (for reports; training skips it).

    The model's previous train/eval flags are restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total, preds, labels, probs = 0.0, [], [], []
    try:
        with no_grad():
            for x, y in loader.epoch(0):
                logits = model(Tensor(x))
                total += float(F.cross_entropy(logits, y, reduction="sum").data)
                preds.append(logits.data.argmax(axis=1))
                labels.append(y)
                if probabilities:
                    probs.append(F.softmax(logits, dim=1).data)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    if not labels:
        return EvalResult(float("nan"), float("nan"), np.zeros(0, np.int64), np.zeros(0, np.int64))
    p, y = np.concatenate(preds), np.concatenate(labels)
    return EvalResult(total / len(y), float((p == y).mean()), p, y, np.concatenate(probs) if probs else None)


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, pred), 1)
    return counts


def per_class_precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(counts).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / counts.sum(axis=0)
        recall = tp / counts.sum(axis=1)
    return precision, recall
