"""A training run: output folder, data, model, resume, the epoch loop, metrics and checkpoints.

Order matters for "nothing lost": the config, the output folder (checked, not created), the
data and the weights are all validated before anything is written; then each checkpoint is
written atomically (see io.checkpoint) and old ones are rotated only after the new one is
in place. A run is fully described by the checkpoint's position (epoch, batch) and arrays:
the data order and augmentation of an epoch depend on (seed, epoch) only, and the learning
rate on the global step only, so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..config import Config, config_to_dict, config_to_yaml, diff_configs
from ..data import AugmentSpec, BatchLoader, DatasetSplits, load_dataset
from ..errors import AutotrainError, ConfigError, NumericalError, WeightsError
from ..io.checkpoint import (BEST_NAME, LAST_NAME, atomic_write_bytes, clean_stale_temp_files, encode_checkpoint,
                             epoch_checkpoint_name, latest_valid_checkpoint, load_checkpoint,
                             rotate_checkpoints, saved_step, unwritable_folder)
from ..optim import SGD, scheduled_lr
from ..distributed import Communicator
from ..nn import BatchNorm2d
from ..resources import resolve_data_path
from .loop import EpochSums, Reporter, Reporters, evaluate, train_step
from .setup import build_model, checkpoint_config, load_model_state, set_train_mode, unfreeze_all

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds")
RUN_FILES = ("config.yaml", "metrics.csv", LAST_NAME, BEST_NAME)
EVAL_BATCH = 256


class Interrupted(AutotrainError):
    """SIGINT/SIGTERM stopped the run after a clean checkpoint; exit 128 + signal number."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = signum
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by signal {signum}; checkpoint {checkpoint}")


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "finished" or "already finished"
    history: list[dict] = field(default_factory=list)
    best_val_acc: float | None = None
    last_checkpoint: Path | None = None


# --------------------------------------------------------------------------- output folder


def _has_run(out: Path) -> bool:
    if not out.is_dir():
        return False
    return any((out / n).exists() for n in RUN_FILES) or any(out.glob("epoch-*.safetensors"))


def check_output_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an unusable output folder before anything is trained or written (exit 2)."""
    problem = unwritable_folder(out)
    if problem is None and _has_run(out) and not resume and not overwrite:
        problem = "already holds a run; pass --resume auto to continue it or --overwrite to start over"
    if problem is not None:
        raise ConfigError(f"output.dir: {out} {problem}")


def _clear_run(out: Path) -> None:
    """--overwrite: remove the previous run's files (only those autotrain writes)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in out.glob("epoch-*.safetensors"):
        p.unlink()
    clean_stale_temp_files(out)


# --------------------------------------------------------------------------- data


def load_data(cfg: Config, reporter: Reporter | None = None) -> DatasetSplits:
    """The config's data set; an imagefolder's decoding progress and cache warnings go to
    ``reporter`` (``on_data_progress``, ``on_message``)."""
    d = cfg.data
    # A shipped dataset (datasets/fashion_5to9) is found from any folder, as weights/ files are.
    path = resolve_data_path(d.path) if d.path else d.path
    return load_dataset(d.source, path, d.image_size, cfg.model.in_channels, cfg.model.num_classes,
                        d.val_fraction, list(d.classes) if d.classes is not None else None, cfg.seed,
                        cache=d.cache, progress=reporter.on_data_progress if reporter else None,
                        notify=reporter.on_message if reporter else None)


def make_loaders(cfg: Config, data: DatasetSplits) -> tuple[BatchLoader, BatchLoader | None]:
    aug = AugmentSpec(crop_padding=cfg.data.augment.crop_padding, hflip=cfg.data.augment.hflip)
    # A last batch of a single image would reach BatchNorm with one value per channel when
    # the feature maps shrink to 1x1, which torch (and autotrain) refuse: drop it then.
    lone_last = len(data.train_y) % cfg.train.batch_size == 1
    train = BatchLoader(data.train_x, data.train_y, cfg.train.batch_size, data.mean, data.std,
                        shuffle=True, seed=cfg.seed, augment=aug, drop_last=lone_last)
    val = None
    if len(data.val_y):
        val = BatchLoader(data.val_x, data.val_y, EVAL_BATCH, data.mean, data.std, shuffle=False)
    return train, val


# --------------------------------------------------------------------------- checkpoints


def _optimizer_tensors(opt: SGD, names: list[str]) -> dict[str, np.ndarray]:
    """Momentum buffers under ``momentum_buffer.<parameter name>`` (the live arrays: a
    checkpoint encodes them at once, so no copy as state_dict would make)."""
    return {f"{k}.{names[i]}": v for i, s in enumerate(opt.state) for k, v in s.items()}


def _load_optimizer(opt: SGD, tensors: dict[str, np.ndarray], names: list[str], source: Path) -> None:
    """Momentum buffers from a checkpoint, by parameter name. The hyper-parameters stay those
    of the current config (lr is rescheduled every step anyway), so a resumed run uses what
    its config.yaml and new checkpoints record."""
    state = {}
    for i, n in enumerate(names):
        buf = tensors.get(f"momentum_buffer.{n}")
        if buf is not None:
            state[i] = {"momentum_buffer": buf}
    unknown = set(tensors) - {f"momentum_buffer.{n}" for n in names}
    if unknown:
        raise WeightsError(f"{source}: optimizer state names parameters the model does not train: "
                           + ", ".join(sorted(unknown)[:5]))
    try:
        opt.load_state_dict({"state": state, "param_groups": opt.param_groups_meta()})
    except ValueError as err:
        raise WeightsError(f"{source}: optimizer state does not fit the model: {err}") from None


def _metrics_csv(history: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    return buf.getvalue().encode()


def _epoch_wrote_best(history: list[dict], finished: bool) -> bool:
    """Whether the last epoch of ``history`` writes best.safetensors: it beat every earlier
    val_acc, or (no validation split) it is the final epoch. ``_end_epoch`` decides by it, and
    resume's repair reads the same answer back."""
    if not history:
        return False
    final = history[-1].get("val_acc")
    if final is None:
        return finished and all(row.get("val_acc") is None for row in history)
    earlier = [row["val_acc"] for row in history[:-1] if row.get("val_acc") is not None]
    return not earlier or final > max(earlier)


# --------------------------------------------------------------------------- the run


def _with_loggers(cfg: Config, reporter: Reporter) -> Reporter:
    """The caller's reporter plus the loggers the config asks for (output.tensorboard): the
    one place that decides which files a run logs to. Raises ConfigError before anything
    trains when a logger's optional dependency is missing."""
    if not cfg.output.tensorboard:
        return reporter
    from .tensorboard_log import TensorBoardLogger

    return Reporters(reporter, TensorBoardLogger(Path(cfg.output.dir) / "tb"))


class RunFolder:
    """Every file a run writes goes through here. Under data parallelism only rank 0 writes
    (``writes=False`` elsewhere: each method then does nothing); reading is anyone's."""

    def __init__(self, out: Path, writes: bool = True):
        self.out, self.writes = out, writes

    def prepare(self, clear: bool) -> None:
        """Create the folder; ``clear`` (--overwrite): remove a previous run's files; remove
        stale temp files of killed writers."""
        if self.writes:
            self.out.mkdir(parents=True, exist_ok=True)
            if clear:
                _clear_run(self.out)
            clean_stale_temp_files(self.out)

    def write(self, name: str, data: bytes) -> None:
        if self.writes:
            atomic_write_bytes(self.out / name, data)

    def rotate(self, keep_last: int) -> None:
        if self.writes:
            rotate_checkpoints(self.out, keep_last)

    def clean(self) -> None:
        if self.writes:
            clean_stale_temp_files(self.out)


class Trainer:
    """One run of a config; ``run()`` trains from scratch or from a checkpoint to the end.

    ``comm`` (autotrain.distributed) is the data-parallel communicator: each rank trains its
    shard of every global batch; rank 0 alone reports and writes. The default is one process.
    """

    def __init__(self, cfg: Config, *, resume: str | None = None, overwrite: bool = False,
                 reporter: Reporter | None = None, should_stop: Callable[[], int | None] = lambda: None,
                 config_dir: Path | None = None, comm: Communicator | None = None):
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.comm = comm or Communicator()
        # Who writes and who reports is decided here, once: rank 0 (or the only process).
        writer = self.comm.is_writer
        self.reporter = _with_loggers(cfg, reporter or Reporter()) if writer else Reporter()
        self.should_stop = should_stop
        self.config_dir = config_dir
        self.out = Path(cfg.output.dir)
        self.folder = RunFolder(self.out, writes=writer)

    # -- set-up, all before the first write ---------------------------------------------------
    def _resume_checkpoint(self):
        if not self.resume:
            return None
        if self.resume == "auto":
            found = latest_valid_checkpoint(self.out)
            if found is None:
                self.reporter.on_message(f"no valid checkpoint in {self.out}: starting fresh")
                return None
            path, ckpt = found
        else:
            path = Path(self.resume)
            ckpt = load_checkpoint(path)
        saved = checkpoint_config(ckpt, path)
        # seed decides the train/validation split and the batch order, so it is data too.
        # What is frozen and when it thaws decides which parameters the optimizer state is for.
        differ = diff_configs(saved, self.cfg, ("seed", "model", "data", "finetune"))
        # The batch size fixes what a saved batch position and global step mean (the data
        # order in batches, the per-step lr schedule), so a resume cannot change it either.
        if saved.train.batch_size != self.cfg.train.batch_size:
            differ.append("train.batch_size")
        if differ:
            raise ConfigError(f"--resume {path}: the checkpoint's config differs in " + ", ".join(differ)
                              + "; start a new run (another output.dir) instead")
        return path, ckpt

    def _build(self, resumed):
        cfg = self.cfg
        data = load_data(cfg, self.reporter)
        setup = build_model(cfg, self.config_dir, pretrained=resumed is None)
        train_loader, val_loader = make_loaders(cfg, data)
        self.setup, self.data = setup, data
        self.train_loader, self.val_loader = train_loader, val_loader
        self.position = {"epoch": 0, "batch": 0, "step": 0}
        self.sums = EpochSums()
        self.history: list[dict] = []
        if resumed is not None:
            path, ckpt = resumed
            meta = ckpt.metadata
            if meta.get("unfrozen"):
                unfreeze_all(setup)
            load_model_state(setup.model, ckpt.model_state, path)
            self.position = {k: int(meta["position"][k]) for k in ("epoch", "batch", "step")}
            self.sums = EpochSums(**meta.get("epoch_sums", {}))
            self.history = list(meta.get("history", []))
        self.optimizer = self._make_optimizer()
        if resumed is not None:
            _load_optimizer(self.optimizer, resumed[1].optimizer_state, self._trainable_names(), resumed[0])
        if self.comm.size > 1:
            # Every rank starts from rank 0's arrays (as DDP), whatever each built or loaded.
            self.comm.broadcast([t.data for t in setup.model.parameters()] + self._buffers()
                                + [b for s in self.optimizer.state for b in s.values()])
        self._bn_synced = False

    def _sync_batchnorm(self, global_batch: int) -> None:
        """distributed.sync_bn: the BatchNorm layers reduce their statistics over the ranks,
        for every batch that is sharded (a short batch that rank 0 computes whole needs none,
        and the other ranks would not join the reductions)."""
        on = self.cfg.distributed.sync_bn and self.comm.splits(global_batch)
        if on != self._bn_synced:
            for m in self.setup.model.modules():
                if isinstance(m, BatchNorm2d):
                    m.stats_reduce = self.comm.sum if on else None
            self._bn_synced = on

    def _buffers(self) -> list[np.ndarray]:
        return [b.data for b in self.setup.model.buffers()]

    @property
    def best(self) -> float | None:
        """The best validation accuracy so far (None without a validation split)."""
        return max((r["val_acc"] for r in self.history if r.get("val_acc") is not None), default=None)

    @property
    def unfrozen(self) -> bool:
        """Whether the frozen parameters have thawed (finetune.unfreeze_at_epoch)."""
        return bool(self.setup.thawed)

    def _trainable_names(self) -> list[str]:
        return [n for g in self.optimizer.param_groups for n in g["names"]]

    def _make_optimizer(self) -> SGD:
        o, ft = self.cfg.optimizer, self.cfg.finetune
        mult = ft.backbone_lr_mult if self.unfrozen else None
        groups = self.setup.parameter_groups(o.lr, mult)
        return SGD(groups, lr=o.lr, momentum=o.momentum, dampening=o.dampening,
                   weight_decay=o.weight_decay, nesterov=o.nesterov)

    # -- checkpoints --------------------------------------------------------------------------
    def _metadata(self, finished: bool) -> dict:
        return {
            "config": config_to_dict(self.cfg),
            "version": __version__,
            "position": self.position,
            "epoch": self.position["epoch"],
            "step": self.position["step"],
            "epoch_sums": self.sums.as_dict(),
            "history": self.history,
            "best_val_acc": self.best,
            "finished": finished,
            "unfrozen": self.unfrozen,
            "optimizer_groups": self.optimizer.param_groups_meta(),
            "schedule": {"name": self.cfg.schedule.name, "steps_per_epoch": len(self.train_loader),
                         "lr": self._lr(self.position["step"])},
            "normalisation": {"mean": self.data.mean, "std": self.data.std},
            "class_names": self.data.class_names,
            "image_size": self.cfg.data.image_size,
            "in_channels": self.cfg.model.in_channels,
            "data_info": self.data.info,
        }

    def _checked_state(self) -> tuple[dict, dict]:
        """Model and optimizer arrays to save; NumericalError if any float among them is NaN/Inf
        (parameters, BatchNorm statistics and momentum buffers alike), so none is ever written."""
        model = self.setup.model.state_dict()
        optim = _optimizer_tensors(self.optimizer, self._trainable_names())
        for kind, tensors in (("model", model), ("optimizer", optim)):
            for n, a in tensors.items():
                if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
                    raise NumericalError(f"{kind} tensor {n} holds NaN/Inf at global step "
                                         f"{self.position['step']}; no checkpoint written")
        return model, optim

    def _save(self, names: list[str], finished: bool = False, state: tuple | None = None) -> Path:
        """Write one checkpoint under each of ``names`` (encoded and hashed once), atomically
        and in order; returns the last path. ``state`` is ``_checked_state()`` when the caller
        already took it."""
        model, optim = state if state is not None else self._checked_state()
        data, _ = encode_checkpoint(model, optim, self._metadata(finished))
        for name in names:
            path = self.out / name
            self.folder.write(name, data)
            self.reporter.on_checkpoint(str(path))
        return path

    def _repair_epoch_end(self, path: Path, ckpt) -> None:
        """Redo the epoch-end writes that a crash cut short (``_end_epoch`` writes metrics.csv,
        epoch-N, last, best, then rotates), so a resumed run's files match an uninterrupted one.

        At one epoch end, epoch-N, last and best hold the same content; so when the checkpoint
        resumed from (taken at an epoch end, in this run folder) is newer than last.safetensors,
        or than best.safetensors while that epoch improved val_acc, it is copied over them.
        Without this, a kill inside the final last.safetensors write left last at the previous
        epoch for good (the resume found epoch-N finished and had nothing to do).
        """
        meta = ckpt.metadata
        position = meta.get("position") or {}
        if position.get("batch") != 0 or not position.get("epoch") or path.resolve().parent != self.out.resolve():
            return
        step = meta.get("step")
        stale = [LAST_NAME] if saved_step(self.out / LAST_NAME) != step else []
        if _epoch_wrote_best(meta.get("history") or [], bool(meta.get("finished"))) \
                and saved_step(self.out / BEST_NAME) != step:
            stale.append(BEST_NAME)
        if stale:
            data = path.read_bytes()
            for name in stale:
                if name != path.name:
                    self.folder.write(name, data)
        self.folder.rotate(self.cfg.output.keep_last)

    def _interrupt(self, signum: int) -> None:
        self.comm.broadcast(self._buffers())  # the running statistics saved are rank 0's
        path = self._save([LAST_NAME])
        self.comm.barrier()  # no rank exits (and ends the job) before rank 0's checkpoint is whole
        raise Interrupted(signum, str(path))

    # -- the loop -----------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        s, o = self.cfg.schedule, self.cfg.optimizer
        return scheduled_lr(o.lr, s.name, step, len(self.train_loader), self.cfg.train.epochs,
                            s.warmup_epochs, s.step_size, s.gamma)

    def _maybe_unfreeze(self, epoch: int) -> None:
        at = self.cfg.finetune.unfreeze_at_epoch
        # unfreeze_at_epoch is 0-based: the epoch at whose start frozen parameters thaw.
        if at is None or self.unfrozen or epoch < at:
            return
        names = unfreeze_all(self.setup)
        # What trained so far keeps its momentum (matched by name, since the groups are
        # re-ordered); the backbone joins as a new group at a lower lr.
        old = dict(zip(self._trainable_names(), self.optimizer.state))
        self.optimizer = self._make_optimizer()
        self.optimizer.state = [old.get(n, {}) for n in self._trainable_names()]
        self.reporter.on_message(f"epoch {epoch + 1}: unfroze {len(names)} parameter tensors "
                                 f"(lr x {self.cfg.finetune.backbone_lr_mult})")

    def _run_epoch(self, epoch: int) -> dict:
        loader, pos = self.train_loader, self.position
        start_batch = pos["batch"] if pos["epoch"] == epoch else 0
        if start_batch == 0:
            self.sums = EpochSums()
        set_train_mode(self.setup)
        self.reporter.on_epoch_start(epoch, self.cfg.train.epochs, len(loader), start_batch)
        t0 = time.perf_counter()
        shards = None if self.comm.size == 1 else self.comm.shard
        for b, (x, y) in enumerate(loader.epoch(epoch, start_batch, part_of=shards), start=start_batch):
            lr = self._lr(pos["step"])
            for g in self.optimizer.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            total = len(loader.batch_indices(epoch, b))
            self._sync_batchnorm(total)
            loss_sum, correct, count, signum = train_step(
                self.setup.model, self.optimizer, x, y,
                f"epoch {epoch + 1}, step {b + 1} (global step {pos['step'] + 1})", self.comm, total,
                self.should_stop)
            self.sums.add(loss_sum, correct, count)
            loss = loss_sum / count
            pos.update(epoch=epoch, batch=b + 1, step=pos["step"] + 1)
            self.reporter.on_step(pos["step"], loss, lr)
            self.reporter.on_batch_end(epoch, b, self.sums.mean_loss, self.sums.accuracy, lr)
            if signum:  # agreed by every rank in the step's collective
                self.sums.seconds += time.perf_counter() - t0
                self._interrupt(signum)
        self.sums.seconds += time.perf_counter() - t0
        self.reporter.on_eval_start(epoch)
        last = epoch + 1 == self.cfg.train.epochs
        val = None
        if self.val_loader is not None and ((epoch + 1) % self.cfg.train.eval_every == 0 or last):
            self.comm.broadcast(self._buffers())  # evaluate with rank 0's running statistics
            val = evaluate(self.setup.model, self.val_loader, comm=self.comm)
            if not np.isfinite(val.loss):  # finite train loss, but the update made the weights overflow
                raise NumericalError(f"validation loss is {val.loss} after epoch {epoch + 1} (global step "
                                     f"{pos['step']}); stopped before writing its checkpoints (try a lower optimizer.lr)")
        seconds = self.sums.seconds
        return {
            "epoch": epoch + 1,
            "train_loss": self.sums.mean_loss,
            "train_acc": self.sums.accuracy,
            "val_loss": None if val is None else val.loss,
            "val_acc": None if val is None else val.accuracy,
            "lr": self._lr(max(pos["step"] - 1, 0)),
            "images_per_s": round(self.sums.seen / seconds, 1) if seconds > 0 else None,
            "seconds": round(seconds, 3),
        }

    def _end_epoch(self, row: dict) -> None:
        cfg, pos = self.cfg, self.position
        self.comm.broadcast(self._buffers())  # the running statistics saved are rank 0's
        state = self._checked_state()  # a non-finite epoch leaves no trace: not even its metrics row
        self.history.append(row)
        pos.update(epoch=row["epoch"], batch=0)
        self.sums = EpochSums()
        finished = row["epoch"] == cfg.train.epochs
        self.folder.write("metrics.csv", _metrics_csv(self.history))
        # epoch-N, last and best of one epoch hold the same bytes: encoded once, written in
        # this order (resume's repair of a cut-short epoch end relies on it).
        names = [epoch_checkpoint_name(row["epoch"])] if cfg.output.keep_last > 0 else []
        names.append(LAST_NAME)
        if _epoch_wrote_best(self.history, finished):
            names.append(BEST_NAME)
        self._save(names, finished, state)
        self.folder.rotate(cfg.output.keep_last)
        self.last_path = self.out / LAST_NAME
        self.reporter.on_epoch_end(row)

    def run(self) -> RunResult:
        try:
            return self._run()
        finally:
            self.reporter.on_finish()

    def _run(self) -> RunResult:
        cfg = self.cfg
        check_output_dir(self.out, self.resume, self.overwrite)
        resumed = self._resume_checkpoint()
        if resumed is not None and resumed[1].metadata.get("finished"):
            done = resumed[1].metadata["position"]["epoch"]
            self.reporter.on_message(f"{resumed[0]}: the run already finished ({done} epochs); nothing to do")
            self.comm.barrier()  # every rank has read the folder before rank 0 changes it
            self.folder.clean()
            self._repair_epoch_end(*resumed)
            meta = resumed[1].metadata
            return RunResult(self.out, "already finished", meta.get("history", []), meta.get("best_val_acc"), resumed[0])
        self._build(resumed)
        # Everything is validated (on every rank): now the folder may be created and written.
        self.comm.barrier()
        self.folder.prepare(clear=self.overwrite and resumed is None)
        if resumed is not None:
            self._repair_epoch_end(*resumed)
        self.folder.write("config.yaml", config_to_yaml(cfg).encode())
        self.reporter.on_start(self._start_info(resumed))
        self.last_path = None
        for epoch in range(self.position["epoch"], cfg.train.epochs):
            self._maybe_unfreeze(epoch)
            row = self._run_epoch(epoch)
            self._end_epoch(row)
            signum = self.comm.agree_to_stop(self.should_stop())
            if signum:
                raise Interrupted(signum, str(self.last_path))
        return RunResult(self.out, "finished", self.history, self.best, self.last_path)

    def _start_info(self, resumed) -> dict:
        s = self.setup
        return {
            "run_dir": str(self.out),
            "resumed_from": None if resumed is None else str(resumed[0]),
            "position": dict(self.position),
            "train_samples": int(len(self.data.train_y)),
            "val_samples": int(len(self.data.val_y)),
            "classes": self.data.class_names,
            "parameters": sum(int(np.prod(p.shape)) for p in s.model.parameters()),
            "trainable": sum(int(np.prod(p.shape)) for p in s.model.parameters() if p.requires_grad),
            "data_info": self.data.info,
            "setup": s,
            "seed": self.cfg.seed,
            "num_classes": self.cfg.model.num_classes,
        }


def train(cfg: Config, **kwargs) -> RunResult:
    """Train ``cfg`` to the end (see Trainer for the keyword arguments)."""
    return Trainer(cfg, **kwargs).run()
