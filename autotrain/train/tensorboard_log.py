"""TensorBoard event files for a run (``output.tensorboard: true``), written by tensorboardX.

A ``Reporter`` like the CLI's: the trainer knows nothing of TensorBoard, it only reports
events and ``run._with_loggers`` adds this logger beside the CLI's reporter.

Tags, all on the global-step axis (so per-epoch points sit where their epoch ended):
``train/loss`` and ``train/lr`` every step (that batch's loss, the base learning rate);
``epoch/train_loss``, ``epoch/train_acc``, ``val/loss``, ``val/acc`` (epochs that evaluate)
and ``speed/images_per_s`` once per epoch.

Resume: each start opens a new event file whose first record is a purge marker at the
step the run continues from (tensorboardX's ``purge_step``). TensorBoard's readers drop the
earlier files' events at or after that step, so a run killed after its last checkpoint
shows one curve, without the steps it is about to train again.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError, OutputError
from .loop import Reporter

INSTALL_HINT = "pip install 'autotrain[report]'"


class TensorBoardLogger(Reporter):
    """Writes the run's events under ``logdir``. Nothing is created before ``on_start``
    (the run has validated everything by then); ``on_finish`` closes the file."""

    def __init__(self, logdir: Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError(f"output.tensorboard: needs the tensorboardX package, which is not installed: "
                              f"{INSTALL_HINT}") from None
        self._writer_class = SummaryWriter
        self.logdir = Path(logdir)
        self.writer = None
        self.step = 0

    def on_start(self, info: dict) -> None:
        self.step = int(info["position"]["step"])
        try:
            # The suffix keeps two starts within one second (the file name's timestamp) in two
            # files, sorted in start order: the readers load a folder's files by name.
            self.writer = self._writer_class(str(self.logdir), purge_step=self.step + 1, flush_secs=10,
                                             filename_suffix=f".{time.time_ns()}")
        except OSError as err:
            raise OutputError(f"cannot write {self.logdir}: {err.strerror or err}") from None

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self.step = step
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def on_epoch_end(self, row: dict) -> None:
        for tag, key in (("epoch/train_loss", "train_loss"), ("epoch/train_acc", "train_acc"),
                         ("val/loss", "val_loss"), ("val/acc", "val_acc"),
                         ("speed/images_per_s", "images_per_s")):
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], self.step)
        # The epoch's checkpoint is on disk by now: make its events as durable as it is.
        self.writer.flush()

    def on_finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
