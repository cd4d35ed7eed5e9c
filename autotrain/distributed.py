"""Data parallelism over MPI: the communicator the trainer calls at its named points.

``mpiexec -n N autotrain train CONFIG`` starts N processes (ranks); each computes its shard of
every global batch, and they agree through this module only:

* ``shard(n)``: which rows of a global batch of ``n`` this rank computes (contiguous; sizes
  differ by at most one, the first ``n % N`` ranks taking one more; a batch of fewer than
  2N rows goes whole to rank 0);
* ``sum(values)``: a few float64 numbers (loss and accuracy sums, a non-finite flag, BatchNorm
  statistics) summed over the ranks;
* ``combine_gradients(arrays, extras)``: the trainable gradients summed over the ranks with
  ONE in-place ``Allreduce`` on a flat buffer of their dtype (the buffer API, never pickling),
  the step's loss/accuracy sums and its NaN and stop flags riding in the same buffer: one
  synchronisation a step. The sums come back as views of that buffer (torch DDP's
  ``gradient_as_bucket_view``: no copy back). Each rank's
  loss is scaled by its share of the batch (``loss_weight``), so the sum is the full batch's
  mean gradient, whatever the shard sizes (as torch DDP averages equal shards);
* ``agree_to_stop(signum)``: every rank stops at the same step when any got SIGINT/SIGTERM;
* ``broadcast(arrays)``: rank 0's arrays to every rank: parameters, buffers and momentum at
  start; BatchNorm buffers before each evaluation and checkpoint (the running statistics are
  rank 0's, as DDP's ``broadcast_buffers``). Parameters stay identical afterwards because
  every rank applies the same summed gradients;
* ``abort(code)``: end every rank at once, for an error one rank meets alone;
* ``is_writer``: rank 0 alone prints, writes metrics.csv and checkpoints.

A single process gets ``Communicator``, whose verbs are the identity: the trainer has one code
path. mpi4py is imported here and nowhere else; this module sees NumPy arrays, never the
engine's graph.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError
from .layout import flat_view, view_like

INSTALL_HINT = "pip install 'autotrain[mpi]' (mpi4py and MPICH's mpiexec)"
# What launchers set in each rank's environment: MPICH/Hydra (PMI_*), Open MPI, Slurm/PMIx.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


class Communicator:
    """One process: every verb is the identity (the default)."""

    rank = 0
    size = 1
    local_size = 1

    @property
    def is_writer(self) -> bool:
        """Whether this rank prints and writes the run's files (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """Rows of a global batch of ``n`` that this rank computes. A batch too small to give
        every rank two rows (a short last batch) is computed whole by rank 0, the others adding
        nothing: BatchNorm cannot normalise a shard of one image at 1x1, nor compute on none."""
        if not self.splits(n):
            return slice(0, n if self.rank == 0 else 0)
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def splits(self, n: int) -> bool:
        """Whether a global batch of ``n`` is split over the ranks (the same answer on every rank)."""
        return self.size > 1 and n >= 2 * self.size

    def loss_weight(self, local: int, total: int) -> float:
        """Factor on this rank's mean loss so that the summed gradients are the global batch's
        mean gradient: its share of the batch (1.0 in one process, exactly)."""
        return 1.0 if self.size == 1 else local / total

    def sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """``values`` summed over the ranks, as float64."""
        return np.array(values, dtype=np.float64)

    def combine_gradients(self, arrays: list[np.ndarray], extras: Sequence[float] = ()
                          ) -> tuple[list[np.ndarray], np.ndarray]:
        """Sum every rank's ``arrays`` (the gradients), and the few numbers ``extras`` (step
        sums and flags) with them in the same collective. Returns the summed arrays, each
        laid out like its input (under MPI: views of the communicator's buffer, valid until
        the next call, or the input itself summed in place), and the summed extras (float64
        values of a float32 sum: exact for counts below 2**24). One process: ``arrays`` as
        they are."""
        return list(arrays), np.array(extras, dtype=np.float64)

    def agree_to_stop(self, signum: int | None) -> int | None:
        """The signal any rank received (the highest number), else None."""
        return signum

    def broadcast(self, arrays: list[np.ndarray]) -> None:
        """Overwrite ``arrays`` in place with rank 0's."""

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, code: int) -> None:
        """End every rank now with exit ``code`` (an error that only this rank met: the others
        would wait for it forever in their next collective). One process: nothing to do."""

    def describe(self) -> str:
        return "1 process"


class MPICommunicator(Communicator):
    """N ranks over MPI (mpi4py on MPICH or Open MPI)."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise ConfigError(f"started as {launched_size()} MPI processes, but mpi4py is not installed "
                              f"({err}); {INSTALL_HINT}") from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()
        self._buffer = np.zeros(0, np.float32)

    def sum(self, values) -> np.ndarray:
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, out, op=self._mpi.SUM)
        return out

    def combine_gradients(self, arrays: list[np.ndarray], extras: Sequence[float] = ()
                          ) -> tuple[list[np.ndarray], np.ndarray]:
        sizes = [a.size for a in arrays]
        total = sum(sizes) + len(extras)
        dtype = np.result_type(*arrays) if arrays else np.float32  # float64 in gradcheck-style runs
        if self._buffer.size != total or self._buffer.dtype != dtype:
            self._buffer = np.empty(total, dtype)  # allocated once: the set changes only on a thaw
        buf, offset, blocks = self._buffer, 0, []
        for a, n in zip(arrays, sizes):
            # Each gradient goes in in its own memory order (conv weights are channels-last): a
            # plain block copy, and it comes back as a view of the buffer with its own strides.
            block, flat = buf[offset:offset + n], flat_view(a)
            if flat is None:  # not one dense block: copied in logical order, and back after
                block.reshape(a.shape)[...] = a
            else:
                block[...] = flat
            blocks.append((block, flat))
            offset += n
        buf[offset:] = extras
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        summed = []
        for a, (block, flat) in zip(arrays, blocks):
            if flat is not None and a.dtype == dtype:
                summed.append(view_like(block, a))
                continue
            # A view would not be laid out (or typed) like ``a``: copy back into it.
            if flat is None:
                a[...] = block.reshape(a.shape)
            else:
                flat[...] = block
            summed.append(a)
        return summed, buf[offset:].astype(np.float64)

    def agree_to_stop(self, signum: int | None) -> int | None:
        flag = np.array([signum or 0], dtype=np.int64)
        self.comm.Allreduce(self._mpi.IN_PLACE, flag, op=self._mpi.MAX)
        return int(flag[0]) or None

    def broadcast(self, arrays: list[np.ndarray]) -> None:
        for a in arrays:
            if a.flags.c_contiguous:
                self.comm.Bcast(a, root=0)
            else:  # MPI needs one contiguous block: receive into a copy, then write it back
                block = np.ascontiguousarray(a)
                self.comm.Bcast(block, root=0)
                a[...] = block

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            self.comm.Abort(code)
        finally:
            # MPI_Abort can return: the launcher's SIGTERM, sent to every rank (this one too),
            # may interrupt its wait for the launcher. The caller must not go on (it would
            # print its error a second time): end here with the code.
            os._exit(code)

    def describe(self) -> str:
        return f"{self.size} MPI processes"


def launched_size() -> int:
    """How many ranks the launcher started (1 when not started by mpiexec)."""
    for var in _SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def init() -> Communicator:
    """The communicator of this process: MPI when mpiexec started more than one rank (ConfigError
    with the install hint when mpi4py is missing), else the single-process one. Under MPI,
    each rank's BLAS threads are limited to cores / ranks on this host unless the user set a
    thread variable, so N ranks never oversubscribe the machine by default."""
    if launched_size() <= 1:
        return Communicator()
    comm = MPICommunicator()
    if comm.size > 1 and not any(os.environ.get(v) for v in _THREAD_VARS):
        _limit_blas_threads(max(1, (os.cpu_count() or 1) // comm.local_size))
    return comm


def _limit_blas_threads(threads: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # part of the mpi extra; without it BLAS keeps its own count
        return
    threadpool_limits(threads)


def mpiexec_argv(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``autotrain ARGV`` as ``nproc`` ranks (``--nproc``, as torchrun
    does for torch): the mpiexec beside this Python (the MPICH wheel's), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    launcher = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if launcher is None:
        raise ConfigError(f"--nproc {nproc}: no mpiexec found; {INSTALL_HINT}")
    try:
        import mpi4py  # noqa: F401  (checked here so the error is one line, not N)
    except ImportError:
        raise ConfigError(f"--nproc {nproc}: mpi4py is not installed; {INSTALL_HINT}") from None
    return [launcher, "-n", str(nproc), sys.executable, "-m", "autotrain.cli", *argv]
