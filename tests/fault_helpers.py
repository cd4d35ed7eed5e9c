"""Helpers for the fault-injection suite (tests/test_faults_*.py).

Two roles:

* imported by the tests: run the real ``autotrain`` CLI in a subprocess (BLAS threads pinned,
  the checkout first on PYTHONPATH), run many such commands concurrently, kill one at a chosen
  moment, and check what a run folder holds;
* run as a script, ``python tests/fault_helpers.py <autotrain args>``: the same CLI
  (``autotrain.cli.main``) after installing the faults described by the JSON in
  ``AUTOTRAIN_TEST_FAULTS`` (a test-only wrapper; nothing here is imported by autotrain):

  - ``{"signal_at_step": [signum, step]}``: the process sends itself ``signum`` while it is
    inside training step ``step`` (1-based, counted in this process);
  - ``{"signal_in_eval": signum}``: the same, inside the first evaluation;
  - ``{"enospc": {"match": GLOB, "after": N, "nth": K}}``: from the K-th (default 1st) file
    opened for writing whose name matches GLOB, each accepts N bytes, then every write raises
    ``OSError(ENOSPC)``, as a full disk does (``"errno": "EROFS"`` raises that error instead,
    as a file system remounted read-only does);
  - ``{"kill9_in_write": {"match": GLOB, "after": N, "nth": K}}``: the same choice of file and
    moment, but the process sends itself SIGKILL there, after N bytes of that file reached
    the disk: a ``kill -9`` inside a chosen write window, deterministically;
  - ``{"nan_at_step": K}``: the K-th training step's batch is NaN (a NaN loss there);
  - ``{"dataset_error_at_step": K}``: the K-th training step raises DatasetError, as an
    unreadable file on one host's disk would;
  - ``{"rank": R, ...}``: the other faults apply in MPI rank R only;
  - ``{"log_writes": PATH}``: after each ``os.replace`` the destination and the sha256 of its
    new content are appended to PATH (to prove a file was, or was not, rewritten).
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve()
TINY = ROOT / "configs" / "tiny.yaml"
FAULTS_ENV = "AUTOTRAIN_TEST_FAULTS"
TIMING_COLUMNS = ("images_per_s", "seconds")
TEMP_RE = re.compile(r"^\.(.+)\.tmp-(\d+)$")
RUN_FILE_RE = re.compile(r"^(config\.yaml|metrics\.csv|last\.safetensors|best\.safetensors|epoch-\d+\.safetensors)$")
PARALLEL = 4


# --------------------------------------------------------------------------- running the CLI


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: one BLAS thread, no colour, wide lines, no
    inherited fault hooks, the checkout under test first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTRAIN_FAULT") and k != FAULTS_ENV}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NO_COLOR="1",
               TERM="dumb", COLUMNS="200", PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(extra or {})
    return env


def cli_argv(args: list[str], faults: dict | None = None) -> list[str]:
    """argv for the CLI: the console script's ``main`` (through the fault wrapper if needed)."""
    if faults:
        return [sys.executable, str(HELPER), *map(str, args)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'autotrain'; from autotrain.cli import main; main()",
            *map(str, args)]


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def errors(self) -> list[str]:
        """The ``error:`` lines on stderr (the CLI prints one per problem)."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def only_errors_on_stderr(self) -> bool:
        """stderr holds the ``error:`` lines and nothing else (no warning, no traceback)."""
        return [line for line in self.stderr.splitlines() if line.strip()] == self.errors

    def explain(self) -> str:
        return (f"autotrain {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}"
                f"\n--- stderr\n{self.stderr[-3000:]}")


def run_cli(args: list[str], cwd: Path, faults: dict | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> Result:
    """Run ``autotrain ARGS`` to completion in ``cwd``."""
    extra = dict(env or {})
    if faults:
        extra[FAULTS_ENV] = json.dumps(faults)
    start = time.perf_counter()
    done = subprocess.run(cli_argv(args, faults), cwd=cwd, env=cli_env(extra), capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result([str(a) for a in args], done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def run_many(jobs: dict[str, dict]) -> dict[str, Result]:
    """Run independent CLI commands concurrently: ``{name: run_cli kwargs}`` -> ``{name: Result}``."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(run_cli, **kwargs) for name, kwargs in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def run_forked(jobs: dict[str, dict], timeout: float = 300) -> dict[str, Result]:
    """Run many independent ``autotrain`` commands, each in its own process, cheaply.

    One helper process imports ``autotrain.cli`` once, then forks a child per command (at most
    PARALLEL at a time); each child changes to its ``cwd``, points fds 1 and 2 at files and
    calls the console script's ``main()`` with its argv, and its exit status is the command's.
    The same code path as ``autotrain ARGS`` after import, without paying the import (about
    0.4 s of CPU) forty times. ``jobs``: ``{name: {"args": [...], "cwd": Path, "faults": {...}}}``
    (faults optional, installed in the child only).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        spec = {name: {"args": [str(a) for a in job["args"]], "cwd": str(job["cwd"]), "faults": job.get("faults"),
                       "out": os.path.join(scratch, f"{i}.out"), "err": os.path.join(scratch, f"{i}.err")}
                for i, (name, job) in enumerate(jobs.items())}
        spec_path = os.path.join(scratch, "spec.json")
        Path(spec_path).write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, str(HELPER), "--fork-server", spec_path], env=cli_env(),
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"fork server failed:\n{done.stdout}\n{done.stderr}"
        codes = json.loads(done.stdout)
        return {name: Result(spec[name]["args"], codes[name], Path(spec[name]["out"]).read_text(),
                             Path(spec[name]["err"]).read_text(), 0.0) for name in jobs}


def _fork_server(spec_path: str) -> None:
    import traceback

    # what the commands import lazily, imported once here rather than in every child
    import autotrain.io.weights  # noqa: F401
    import autotrain.train.run  # noqa: F401
    from autotrain.cli import main

    spec = json.loads(Path(spec_path).read_text())
    codes: dict[str, int] = {}
    running: dict[int, str] = {}

    def reap() -> None:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

    for name, job in spec.items():
        while len(running) >= PARALLEL:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: one CLI command
            code = 1
            try:
                os.chdir(job["cwd"])
                for fd, path in ((1, job["out"]), (2, job["err"])):
                    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(target, fd)
                    os.close(target)
                sys.argv = ["autotrain", *job["args"]]
                install_faults(job["faults"] or {})
                try:
                    main()
                    code = 0
                except SystemExit as exc:  # what the interpreter would do with it
                    if exc.code is None or isinstance(exc.code, int):
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
                except BaseException:
                    traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        running[pid] = name
    while running:
        reap()
    print(json.dumps(codes))


def start_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, faults: dict | None = None,
              ) -> subprocess.Popen:
    """Start ``autotrain ARGS`` without waiting (stdout/stderr to files in ``cwd``'s parent is
    not needed: they go to pipes read at the end)."""
    extra = dict(env or {})
    if faults:
        extra[FAULTS_ENV] = json.dumps(faults)
    return subprocess.Popen(cli_argv(args, faults), cwd=cwd, env=cli_env(extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, args: list[str], timeout: float = 120) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result([str(a) for a in args], proc.returncode, out, err, 0.0)


def temp_files(folder: Path) -> list[Path]:
    """Hidden ``.<name>.tmp-<pid>`` files of atomic writes in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TEMP_RE.match(p.name))


def wait_for_temp_write(proc: subprocess.Popen, folder: Path, nth: int, timeout: float = 60) -> Path | None:
    """Poll ``folder`` until the ``nth`` atomic write (counted by temp files appearing) is in
    progress; returns that temp file, or None if the process ended first.

    Needs ``AUTOTRAIN_FAULT_WRITE_SLEEP`` in the process so each write stays open long enough
    to be seen (a poll every 2 ms against a window of a few hundred).
    """
    seen_before: set[str] = set()
    count = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = {p.name for p in temp_files(folder)}
        for name in sorted(now - seen_before):
            count += 1
            if count == nth:
                return folder / name
        seen_before = now
        if proc.poll() is not None:
            return None
        time.sleep(0.002)
    raise TimeoutError(f"write #{nth} never started in {folder}")


def wait_for_file(proc: subprocess.Popen, path: Path, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.002)
    raise TimeoutError(f"{path} never appeared")


def kill9(proc: subprocess.Popen) -> None:
    try:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=60)


# --------------------------------------------------------------------------- looking at a run


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content): to prove nothing changed."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_run_folder(run: Path, allowed_temp_pids: set[int] = frozenset()) -> dict[str, object]:
    """Assert that ``run`` holds only whole files: every checkpoint loads with its content hash
    verified, metrics.csv parses, and the only other entries are temp files of dead writers
    (pids in ``allowed_temp_pids``). Returns ``{name: Checkpoint}`` for the checkpoints."""
    from autotrain.io import load_checkpoint

    loaded: dict[str, object] = {}
    if not run.exists():
        return loaded
    for entry in sorted(run.iterdir()):
        temp = TEMP_RE.match(entry.name)
        if temp:
            assert int(temp.group(2)) in allowed_temp_pids, f"temp file of a live or unknown writer: {entry}"
            continue
        assert RUN_FILE_RE.match(entry.name), f"unexpected entry in the run folder: {entry}"
        if entry.suffix == ".safetensors":
            loaded[entry.name] = load_checkpoint(entry)  # raises WeightsError if torn or corrupt
        elif entry.name == "metrics.csv":
            rows = list(csv.DictReader(entry.read_text().splitlines()))
            assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)), entry
        else:
            assert entry.read_text().startswith("seed:"), entry
    return loaded


def metrics_without_timing(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows as strings, without the wall-clock columns."""
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def history_without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history]


def assert_same_arrays(got: dict, want: dict, what: str) -> None:
    """Bit-for-bit: same names, dtypes, shapes and bytes."""
    assert list(got) == list(want), f"{what}: names differ"
    for name in want:
        a, b = got[name], want[name]
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name} {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{what}: {name} differs"


def assert_same_checkpoint(got, want, what: str) -> None:
    """Same model and optimizer arrays bit for bit, same position and metrics (timing aside)."""
    assert_same_arrays(got.model_state, want.model_state, f"{what} model")
    assert_same_arrays(got.optimizer_state, want.optimizer_state, f"{what} optimizer")
    for key in ("position", "best_val_acc", "finished", "optimizer_groups", "schedule"):
        assert got.metadata[key] == want.metadata[key], f"{what}: metadata {key} differs"
    sums = [{k: v for k, v in c.metadata["epoch_sums"].items() if k != "seconds"} for c in (got, want)]
    assert sums[0] == sums[1], f"{what}: metadata epoch_sums differ"
    # the same config but for the folder it was written to
    got_cfg, want_cfg = dict(got.metadata["config"]), dict(want.metadata["config"])
    got_cfg.pop("output"), want_cfg.pop("output")
    assert got_cfg == want_cfg, f"{what}: metadata config differs"
    assert history_without_timing(got.metadata["history"]) == history_without_timing(want.metadata["history"])


# --------------------------------------------------------------------------- the reference run

_REFERENCE: dict[str, dict] = {}


def tiny_reference(tmp_path_factory) -> dict:
    """An uninterrupted run of configs/tiny.yaml, made once per test session: its checkpoints,
    metrics (timing aside) and wall time, for the exact-resume comparisons."""
    if "tiny" not in _REFERENCE:
        folder = tmp_path_factory.mktemp("reference")
        run = folder / "run"
        start = time.monotonic()
        result = run_cli(["train", str(TINY), "--set", f"output.dir={run}", "-q"], cwd=folder)
        assert result.returncode == 0, result.explain()
        wall = time.monotonic() - start
        _REFERENCE["tiny"] = {"run": run, "checkpoints": check_run_folder(run),
                              "metrics": metrics_without_timing(run), "wall": wall}
    return _REFERENCE["tiny"]


def assert_resumes_to_reference(run: Path, cwd: Path, reference: dict) -> Result:
    """``--resume auto`` to the end: exit 0, no temp file left, every checkpoint and
    metrics.csv as in the uninterrupted reference run (bit for bit, timing aside)."""
    result = run_cli(["train", str(TINY), "--set", f"output.dir={run}", "-q", "--resume", "auto"], cwd=cwd)
    assert_resumed_to_reference(run, result, reference)
    return result


def assert_resumed_to_reference(run: Path, result: Result, reference: dict) -> None:
    """What assert_resumes_to_reference checks, for a resume already run (``result``)."""
    assert result.returncode == 0, result.explain()
    assert temp_files(run) == [], "stale temp files were not cleaned"
    checkpoints = check_run_folder(run)
    assert sorted(checkpoints) == sorted(reference["checkpoints"]), result.explain()
    for name, want in reference["checkpoints"].items():
        assert_same_checkpoint(checkpoints[name], want, name)
    assert metrics_without_timing(run) == reference["metrics"]


# --------------------------------------------------------------------------- the fault wrapper


def _install_signal_at_step(signum: int, step: int) -> None:
    from autotrain.train import run

    real = run.train_step
    calls = [0]

    def train_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signum)  # delivered now, while this step runs
        return real(*args, **kwargs)

    run.train_step = train_step


def _install_signal_in_eval(signum: int) -> None:
    from autotrain.train import run

    real = run.evaluate
    calls = [0]

    def evaluate(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    run.evaluate = evaluate


class _FullDiskFile:
    """A file object that accepts ``budget`` bytes, then fails every write with ENOSPC."""

    def __init__(self, raw, budget: int, name: str, code: int | None = errno.ENOSPC):
        # code None: SIGKILL the process at that point instead of failing the write
        self._raw, self._budget, self._name, self._code = raw, budget, name, code

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._budget:
            if self._budget > 0:
                self._raw.write(data[: self._budget])
                self._budget = 0
            self._raw.flush()
            if self._code is None:
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(self._code, os.strerror(self._code))
        self._budget -= len(data)
        return self._raw.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._raw.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


def _install_enospc(match: str, after: int, nth: int = 1, code: str | None = "ENOSPC") -> None:
    import builtins

    real_open = builtins.open
    opened = [0]

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) \
                and fnmatch.fnmatch(os.path.basename(os.fspath(file)), match):
            opened[0] += 1
            if opened[0] >= nth:
                return _FullDiskFile(f, after, os.fspath(file), None if code is None else getattr(errno, code))
        return f

    builtins.open = open_


def _install_log_writes(log: str) -> None:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        with open(log, "a") as f:
            f.write(json.dumps([os.fspath(dst), sha256(Path(dst))]) + "\n")

    os.replace = replace


def _at_training_step(step: int, change) -> None:
    """Training step ``step`` (1-based, this process) first goes through ``change(x)``, which
    returns the batch it computes on, or raises."""
    from autotrain.train import run

    real = run.train_step
    calls = [0]

    def train_step(model, optimizer, x, y, *args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            x = change(x)
        return real(model, optimizer, x, y, *args, **kwargs)

    run.train_step = train_step


def _install_nan_at_step(step: int) -> None:
    """The batch of training step ``step`` becomes NaN: its loss is NaN."""
    import numpy as np

    _at_training_step(step, lambda x: np.full_like(x, np.nan))


def _install_dataset_error_at_step(step: int) -> None:
    """Training step ``step`` raises DatasetError (exit 4), as an unreadable file would."""
    from autotrain.errors import DatasetError

    def unreadable(x):
        raise DatasetError(f"fault_helpers: batch of step {step} unreadable on this host")

    _at_training_step(step, unreadable)


def install_faults(spec: dict) -> None:
    """Install the faults of ``spec``; ``{"rank": R, ...}`` installs them only in MPI rank R
    (PMI_RANK or OMPI_COMM_WORLD_RANK), so one rank of a data-parallel job can fail alone."""
    spec = dict(spec)
    if "rank" in spec:
        rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
        if rank != spec.pop("rank"):
            return
    for key, value in spec.items():
        if key == "signal_at_step":
            _install_signal_at_step(*value)
        elif key == "signal_in_eval":
            _install_signal_in_eval(value)
        elif key == "enospc":
            _install_enospc(value["match"], value["after"], value.get("nth", 1), value.get("errno", "ENOSPC"))
        elif key == "nan_at_step":
            _install_nan_at_step(value)
        elif key == "dataset_error_at_step":
            _install_dataset_error_at_step(value)
        elif key == "kill9_in_write":
            _install_enospc(value["match"], value["after"], value.get("nth", 1), None)
        elif key == "log_writes":
            _install_log_writes(value)
        else:
            raise SystemExit(f"fault_helpers: unknown fault {key!r}")


def read_write_log(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:2] == ["--fork-server"]:
        _fork_server(sys.argv[2])
        raise SystemExit(0)
    install_faults(json.loads(os.environ.get(FAULTS_ENV, "{}")))
    sys.argv[0] = "autotrain"
    from autotrain.cli import main

    main()
