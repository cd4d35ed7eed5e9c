"""Data-parallel throughput: N=1 (2 BLAS threads) against N=2 MPI ranks (1 thread each).

    python benchmarks/bench_distributed.py --json benchmarks/distributed_last_run.json
    python benchmarks/bench_distributed.py --jobs      # also the README main job end to end,
                                                       # --nproc 2 vs 1 process vs torch 2.13

Two workloads, each timed over the same global batches with the trainer's own train_step:
the digits main job's model and data (configs/digits.yaml: width 16, small stem, 16x16,
batch 64) and torchvision's width-64 resnet18 at 64x64 (imagenet stem, batch 32, synthetic
images). Each measurement is its own ``mpiexec -n N`` process (N=1 too), alternated with the
ceiling below, medians of --repeats with a 90 % bootstrap interval of the speed-up; images/s
over --steps steps after 3 warm-up steps; for N=2 also the share of the step spent in
combine_gradients (the Allreduce, its copies, and waiting for the slower rank). The ceiling:
two processes started together without MPI, each training rank 0's or rank 1's shard on one
BLAS thread with no gradient exchange, timed from a common start: what N=2 would give if
communication and waiting for the other rank were free.

``--jobs`` times ``autotrain train configs/digits.yaml`` (10 epochs) with --nproc 2 and in
one process, and benchmarks/torch_digits_job.py (the same job in torch: split, model,
optimizer, schedule, evaluation), alternated, each in its own process.

OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE, when set on this machine, halve numpy's sgemm: they are
removed from the environment of the processes this script starts (it says so), and never
changed for tests or CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


_FORCED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # as in bench_resnet.py


def clean_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FORCED}
    env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT))
    return env


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


# --------------------------------------------------------------------------- worker (one rank)


def worker(workload: str, steps: int, alone: int | None = None) -> None:
    """One rank of a measurement; with ``alone`` (0 or 1), a process that plays that rank of
    two with no communication at all: its shard, one BLAS thread, gradients not combined.
    Two such processes started together give the machine's ceiling for N=2."""
    import numpy as np

    from autotrain import distributed, models
    from autotrain.config import load_config
    from autotrain.memory import tune_malloc
    from autotrain.optim import SGD
    from autotrain.train.loop import train_step
    from autotrain.train.run import load_data, make_loaders

    tune_malloc()  # as the CLI does for every training process
    comm = distributed.init()
    if alone is not None:
        comm.rank, comm.size = alone, 2  # shard and loss weight of that rank; every verb stays the identity
    if workload == "digits":
        cfg = load_config(ROOT / "configs" / "digits.yaml")
        loader, _ = make_loaders(cfg, load_data(cfg))
        model = models.resnet18(num_classes=10, in_channels=1, width=16, stem="small")
        batches = [loader.batch(0, b, comm.shard(len(loader.batch_indices(0, b))) if comm.size > 1 else None)
                   for b in range(steps + 3)]
        global_batch = cfg.train.batch_size
    else:
        rng = np.random.default_rng(0)
        global_batch = 32
        part = comm.shard(global_batch)
        x = rng.standard_normal((global_batch, 3, 64, 64)).astype(np.float32)[part]
        y = rng.integers(0, 10, global_batch)[part]
        model = models.resnet18(num_classes=10, in_channels=3, width=64, stem="imagenet")
        batches = [(x, y)] * (steps + 3)
    model.train()
    opt = SGD(list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    reduce_seconds = [0.0]
    spans: list[tuple[float, float]] = []  # each step's combine: entered, left
    combine = comm.combine_gradients

    def timed(arrays, extras=()):
        t = time.perf_counter()
        out = combine(arrays, extras)
        spans.append((t, time.perf_counter()))
        reduce_seconds[0] += spans[-1][1] - t
        return out

    comm.combine_gradients = timed
    for x, y in batches[:3]:
        train_step(model, opt, x, y, "warm-up", comm, global_batch)
    comm.barrier()
    if alone is not None:  # the parent starts both processes' timed steps together
        print("ready", flush=True)
        sys.stdin.readline()
    reduce_seconds[0] = 0.0
    spans.clear()
    start = time.perf_counter()
    for x, y in batches[3:]:
        train_step(model, opt, x, y, "timed", comm, global_batch)
    comm.barrier()
    seconds = time.perf_counter() - start
    grads = sum(p.data.size for p in model.parameters())
    report = {"images_per_s": steps * global_batch / seconds, "step_ms": 1e3 * seconds / steps,
              "allreduce_ms": 1e3 * reduce_seconds[0] / steps, "gradient_mb": grads * 4 / 1e6}
    if comm.size > 1 and alone is None:
        report.update(rank_balance(comm, np.array(spans)))
    if comm.is_writer or alone is not None:
        print(json.dumps(report))


def rank_balance(comm, spans) -> dict:
    """Split an N=2 step's combine time into cost and waiting: each rank's compute between
    two combines, and the combine of whichever rank arrived last (it waits for no one).
    Clocks are comparable: one host, CLOCK_MONOTONIC."""
    import numpy as np

    both = comm.comm.allgather(spans)
    compute = [s[1:, 0] - s[:-1, 1] for s in both]
    late = np.argmax([s[1:, 0] for s in both], axis=0)
    late_combine = np.choose(late, [s[1:, 1] - s[1:, 0] for s in both])
    gap = np.abs(compute[0] - compute[1])
    return {"rank0_compute_ms": 1e3 * float(np.median(compute[0])), "rank1_compute_ms": 1e3 * float(np.median(compute[1])),
            "rank_gap_ms": 1e3 * float(np.median(gap)), "rank_gap_p90_ms": 1e3 * float(np.quantile(gap, 0.9)),
            "combine_late_ms": 1e3 * float(np.median(late_combine))}


def measure_ceiling(workload: str, steps: int) -> dict:
    """Two processes, each rank 0 or 1's shard on one thread, no MPI, started together:
    images/s of the pair (global batches over the slower one's time)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", workload, str(steps), "--alone", str(r)],
                              env=clean_env(1), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for p in procs:  # both loaded and warmed up ...
        assert p.stdout.readline().strip() == "ready"
    outs = [p.communicate("go\n")[0] for p in procs]  # ... then timed together
    outs = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a ceiling process failed")
    slower = max(outs, key=lambda o: o["step_ms"])
    return {"images_per_s": min(o["images_per_s"] for o in outs), "step_ms": slower["step_ms"]}


def measure(workload: str, n: int, steps: int) -> dict:
    threads = 2 if n == 1 else 1
    out = subprocess.run([mpiexec(), "-n", str(n), sys.executable, __file__, "--worker", workload, str(steps)],
                         env=clean_env(threads), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def speedup_interval(n1: list[float], n2: list[float], draws: int = 10000) -> tuple[float, float]:
    """A 90 % bootstrap interval of median(n2) / median(n1): how far the machine's noise
    moves the speed-up figure (runs resampled with replacement, each side on its own)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = np.asarray(n1), np.asarray(n2)
    ratios = (np.median(rng.choice(b, (draws, b.size)), axis=1) / np.median(rng.choice(a, (draws, a.size)), axis=1))
    return float(np.quantile(ratios, 0.05)), float(np.quantile(ratios, 0.95))


def throughput(repeats: int, digits_steps: int, workloads: list[str]) -> dict:
    results = {}
    for workload, steps in (("digits", digits_steps), ("w64@64", 6)):
        if workload not in workloads:
            continue
        runs = {1: [], 2: [], "ceiling": []}
        for _ in range(repeats):
            for n in (1, 2, "ceiling"):  # alternated, each its own process(es)
                runs[n].append(measure_ceiling(workload, steps) if n == "ceiling" else measure(workload, n, steps))
        med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
        low, high = speedup_interval([r["images_per_s"] for r in runs[1]], [r["images_per_s"] for r in runs[2]])
        ceiling = med["ceiling"]["images_per_s"] / med[1]["images_per_s"]
        results[workload] = {"n1": med[1], "n2": med[2], "speedup": med[2]["images_per_s"] / med[1]["images_per_s"],
                             "speedup_90": [low, high], "ceiling": med["ceiling"], "ceiling_speedup": ceiling,
                             "allreduce_share": med[2]["allreduce_ms"] / med[2]["step_ms"], "raw": runs}
        print(f"{workload}: N=1 {med[1]['images_per_s']:.0f} img/s, N=2 {med[2]['images_per_s']:.0f} img/s "
              f"({results[workload]['speedup']:.2f}x, 90 % interval {low:.2f}-{high:.2f}); allreduce "
              f"{med[2]['allreduce_ms']:.2f} ms of {med[2]['step_ms']:.1f} ms "
              f"({100 * results[workload]['allreduce_share']:.1f} %); gradients {med[2]['gradient_mb']:.1f} MB; "
              f"ceiling (2 processes, no communication) {med['ceiling']['images_per_s']:.0f} img/s ({ceiling:.2f}x)",
              flush=True)
        print(f"  N=2 step: compute rank 0 {med[2]['rank0_compute_ms']:.1f} ms, rank 1 {med[2]['rank1_compute_ms']:.1f} "
              f"ms; per step the ranks' compute differs by {med[2]['rank_gap_ms']:.1f} ms (median; 90th percentile "
              f"{med[2]['rank_gap_p90_ms']:.1f}); the last rank's combine {med[2]['combine_late_ms']:.2f} ms", flush=True)
    return results


def jobs(repeats: int, work: Path) -> dict:
    """Wall time of the README main job: --nproc 2, one process, torch."""
    commands = {
        "autotrain --nproc 2": ([sys.executable, "-m", "autotrain.cli", "train", str(ROOT / "configs" / "digits.yaml"),
                                 "--set", f"output.dir={work / 'n2'}", "--overwrite", "-q", "--nproc", "2"], 1),
        "autotrain 1 process": ([sys.executable, "-m", "autotrain.cli", "train", str(ROOT / "configs" / "digits.yaml"),
                                 "--set", f"output.dir={work / 'n1'}", "--overwrite", "-q"], 2),
        "torch 2.13": ([sys.executable, str(ROOT / "benchmarks" / "torch_digits_job.py")], 2),
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for name, (cmd, threads) in commands.items():
            t = time.perf_counter()
            subprocess.run(cmd, env=clean_env(threads), check=True, capture_output=True)
            times[name].append(time.perf_counter() - t)
            print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    return {k: {"median_s": statistics.median(v), "runs": v} for k, v in times.items()}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[5]) if sys.argv[4:5] == ["--alone"] else None)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="timed steps of the digits workload")
    ap.add_argument("--only", choices=("digits", "w64@64"), help="time one workload only")
    ap.add_argument("--jobs", action="store_true")
    ap.add_argument("--job-repeats", type=int, default=3, help="runs of each main job with --jobs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    unset = [k for k in _FORCED if k in os.environ]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          + (f"unset {', '.join(unset)} for the measured processes" if unset else
             "OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE not set"))
    import numpy  # noqa: F401  (so threadpool_info sees its BLAS)
    from threadpoolctl import threadpool_info
    blas = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}" for i in threadpool_info()]
    print("BLAS:", "; ".join(blas), "| N=1: 2 threads, N=2: 1 thread a rank")
    report = {"argv": sys.argv[1:], "blas": blas, "cores": os.cpu_count(), "unset": unset, "throughput": throughput(
        args.repeats, args.steps, [args.only] if args.only else ["digits", "w64@64"])}
    if args.jobs:
        work = Path("/tmp/bench_distributed")
        work.mkdir(exist_ok=True)
        report["jobs"] = jobs(args.job_repeats, work)
        for k, v in report["jobs"].items():
            print(f"{k}: median {v['median_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
