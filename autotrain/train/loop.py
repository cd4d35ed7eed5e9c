"""The inner loops: one training step, one pass of evaluation, and the events they report.

Nothing here prints: progress goes to a ``Reporter`` whose methods the CLI implements.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..autograd.function import no_grad
from ..autograd.tensor import Tensor
from ..distributed import Communicator
from ..errors import NumericalError

SINGLE_PROCESS = Communicator()

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

    def add(self, loss_sum: float, correct: int, count: int) -> None:
        """One step's (global) loss sum, correct predictions and samples."""
        self.loss += loss_sum
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


def train_step(model: nn.Module, optimizer, x: np.ndarray, y: np.ndarray, where: str,
               comm: Communicator = SINGLE_PROCESS, total: int | None = None,
               should_stop: Callable[[], int | None] = lambda: None) -> tuple[float, int, int, int | None]:
    """forward, cross-entropy, backward, SGD step on this rank's shard ``x, y`` of a global
    batch of ``total`` samples (default: ``len(y)``, one process). Returns the global batch's
    (loss sum, correct predictions, samples) and the stop signal (SIGINT or SIGTERM) any rank
    received (``should_stop()``, read once per step), else None.

    A non-finite loss on any rank stops every rank before the update, so no non-finite weight
    is ever produced from it: NumericalError naming ``where``. Each loss is weighted by its
    share of the batch and the gradients are summed over the ranks together with the step's
    loss and accuracy sums and flags, in ONE collective (``comm.combine_gradients``; the
    identity in one process): one synchronisation a step, so a rank waits for the others once.
    A parameter that no rank gave a gradient keeps ``.grad`` None and is skipped by the
    optimizer, as in one process.
    """
    total = len(y) if total is None else total
    loss, value, correct = None, 0.0, 0
    if len(y):  # a rank whose shard of a short last batch is empty only adds zeros
        logits = model(Tensor(x))
        loss = F.cross_entropy(logits, y)
        value = float(loss.data)
        correct = int((logits.data.argmax(axis=1) == y).sum())
    # After the forward, not before: freeing the old gradients right before backward allocates
    # the new ones measured 15-20 % faster than freeing them before the forward (one process,
    # digits model, batch 64), presumably the allocator reusing same-sized blocks.
    optimizer.zero_grad()
    if loss is not None:
        weight = comm.loss_weight(len(y), total)
        (loss if weight == 1.0 else loss * weight).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    had_grad = [0.0 if p.grad is None else 1.0 for p in params]
    for p in params:  # the same buffer layout on every rank, an empty shard included
        if p.grad is None:
            p.grad = Tensor(np.zeros_like(p.data))
    signum = should_stop()
    # Summed like the gradients: the step's sums, a non-finite flag, one slot per stop signal
    # and one per parameter that had a gradient here.
    summed, (loss_sum, correct, count, bad, sigint, sigterm, *graded) = comm.combine_gradients(
        [p.grad.data for p in params],
        [value * len(y), correct, len(y), 0.0 if math.isfinite(value) else 1.0,
         float(signum == signal.SIGINT), float(signum == signal.SIGTERM), *had_grad])
    if bad:
        raise NumericalError(f"loss is {loss_sum / count} at {where}; stopped before the update "
                             "(try a lower optimizer.lr)")
    for p, g, n in zip(params, summed, graded):
        if not n:
            p.grad = None
        elif g is not p.grad.data:  # several ranks: the sum is a view of the communicator's buffer
            p.grad = Tensor(g)
    optimizer.step()
    agreed = signal.SIGTERM if sigterm else signal.SIGINT if sigint else None  # SIGTERM wins, as agree_to_stop
    return float(loss_sum), round(correct), round(count), agreed and int(agreed)


def evaluate(model: nn.Module, loader, probabilities: bool = False,
             comm: Communicator = SINGLE_PROCESS) -> EvalResult:
    """Mean loss and accuracy over a loader, under no_grad with the model in eval mode;
    with ``probabilities`` also each sample's softmax (for reports; training skips it).
    With several ranks each computes its shard of every batch and loss and accuracy are
    those of the whole split (predictions and labels stay this rank's).

    The model's previous train/eval flags are restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total, preds, labels, probs = 0.0, [], [], []
    try:
        with no_grad():
            for x, y in loader.epoch(0, part_of=None if comm.size == 1 else comm.shard):
                if not len(y):  # this rank's shard of a short batch is empty (rank 0 takes it)
                    continue
                logits = model(Tensor(x))
                total += float(F.cross_entropy(logits, y, reduction="sum").data)
                preds.append(logits.data.argmax(axis=1))
                labels.append(y)
                if probabilities:
                    probs.append(F.softmax(logits, dim=1).data)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    p = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if comm.size == 1:  # one process: today's arithmetic, bit for bit
        if not len(y):
            return EvalResult(float("nan"), float("nan"), p, y)
        return EvalResult(total / len(y), float((p == y).mean()), p, y, np.concatenate(probs) if probs else None)
    total, correct, count = comm.sum([total, int((p == y).sum()), len(y)])
    if not count:
        return EvalResult(float("nan"), float("nan"), p, y)
    return EvalResult(total / count, float(correct / count), p, y, np.concatenate(probs) if probs else None)


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
