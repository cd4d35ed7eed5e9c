"""ResNet-18 (width 64, torchvision layout) step times: autotrain vs PyTorch, side by side.

    python benchmarks/bench_resnet.py                 # every shape, torch too when installed
    python benchmarks/bench_resnet.py --shapes 16x64 --json bench.json

For each input shape it times, alternating autotrain and torch in the same process: forward
in train mode, forward in eval mode, forward+backward, a full SGD step, and a
frozen-backbone step (only fc trains). Medians after warm-up. It reports the ratio
autotrain/torch per row, achieved GFLOP/s (analytic conv + fc FLOPs) and the fraction of the
measured sgemm rate, the BLAS library, its kernel and thread count, and peak RSS over 10 steps
at 16x3x64x64 (each framework in a fresh subprocess).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (set on some machines for old OpenBLAS builds) halve
current NumPy's sgemm speed: this script unsets both for its own process only (re-executing
itself), and says so in its output. Tests and CI never change them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

_FORCED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _FORCED) and os.environ.get("AUTOTRAIN_BENCH_REEXEC") != "1":
    env = {k: v for k, v in os.environ.items() if k not in _FORCED}
    env["AUTOTRAIN_BENCH_REEXEC"] = "1"
    env["AUTOTRAIN_BENCH_UNSET"] = ",".join(f"{k}={os.environ[k]}" for k in _FORCED if k in os.environ)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402  (after the environment is settled)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import autotrain as at  # noqa: E402
from autotrain.memory import tune_malloc  # noqa: E402

SHAPES = {"1x64": (1, 64), "16x64": (16, 64), "32x32": (32, 32), "8x224": (8, 224)}
PAUSE_S = 0.25  # before each timed call, outside the timing (see time_pair)
ROWS = ("forward_train", "forward_eval", "forward_backward", "step", "frozen_step")
# Forward conv+fc FLOPs per row: backward costs two forwards; the frozen step's backward is fc only.
FLOP_PASSES = {"forward_train": 1, "forward_eval": 1, "forward_backward": 3, "step": 3, "frozen_step": 1}


def conv_fc_flops(batch: int, size: int, num_classes: int = 1000, width: int = 64) -> float:
    """Forward multiply-adds x 2 of every conv and the fc of torchvision's resnet18."""
    flops = 0.0

    def conv(h, cin, cout, k, s, p):
        nonlocal flops
        oh = (h + 2 * p - k) // s + 1
        flops += 2.0 * batch * oh * oh * cout * cin * k * k
        return oh

    h = conv(size, 3, width, 7, 2, 3)
    h = (h + 2 - 3) // 2 + 1  # max pool
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            s = 2 if stage > 0 and block == 0 else 1
            h_in = h
            h = conv(h_in, cin, cout, 3, s, 1)
            conv(h, cout, cout, 3, 1, 1)
            if s != 1 or cin != cout:
                conv(h_in, cin, cout, 1, s, 0)
            cin = cout
    flops += 2.0 * batch * cin * num_classes
    return flops


def sgemm_gflops() -> float:
    """NumPy float32 matmul rate on a BLAS-friendly square problem."""
    a = np.random.rand(1536, 1536).astype(np.float32)
    b = np.random.rand(1536, 1536).astype(np.float32)
    a @ b
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1536 ** 3 / min(times) / 1e9


def blas_info() -> dict:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"library": "unknown (pip install threadpoolctl)"}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return {"library": pool.get("internal_api"), "version": pool.get("version"),
                    "kernel": pool.get("architecture"), "threads": pool.get("num_threads")}
    return {"library": "none found"}


# --------------------------------------------------------------------------- the two frameworks


class Ours:
    name = "autotrain"

    def __init__(self, batch, size, frozen=False):
        at.manual_seed(0)
        self.model = at.models.resnet18()
        if frozen:
            self.model.requires_grad_(False)
            self.model.fc.requires_grad_(True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = at.optim.SGD(params, lr=0.01, momentum=0.9)
        rng = np.random.default_rng(0)
        self.x = rng.random((batch, 3, size, size), dtype=np.float32)
        self.y = rng.integers(0, 1000, batch)

    def forward(self, train=True):
        self.model.train(train)
        with at.no_grad() if not train else contextlib.nullcontext():
            return self.model(at.tensor(self.x))

    def forward_backward(self):
        self.model.train()
        loss = at.nn.functional.cross_entropy(self.model(at.tensor(self.x)), self.y)
        loss.backward()

    def step(self):
        self.model.train()
        self.opt.zero_grad()
        loss = at.nn.functional.cross_entropy(self.model(at.tensor(self.x)), self.y)
        loss.backward()
        self.opt.step()


class Torch:
    name = "torch"

    def __init__(self, batch, size, frozen=False):
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from torch_reference import resnet18 as torch_resnet18

        self.torch = torch
        torch.manual_seed(0)
        self.model = torch_resnet18(num_classes=1000, width=64, stem="imagenet")
        if frozen:
            self.model.requires_grad_(False)
            self.model.fc.requires_grad_(True)
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        rng = np.random.default_rng(0)
        self.x = torch.from_numpy(rng.random((batch, 3, size, size), dtype=np.float32))
        self.y = torch.from_numpy(rng.integers(0, 1000, batch))

    def forward(self, train=True):
        self.model.train(train)
        if train:
            return self.model(self.x)
        with self.torch.no_grad():
            return self.model(self.x)

    def forward_backward(self):
        self.model.train()
        self.torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()

    def step(self):
        self.model.train()
        self.opt.zero_grad()
        self.torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()


def _row_fn(impl, row):
    return {"forward_train": lambda: impl.forward(True), "forward_eval": lambda: impl.forward(False),
            "forward_backward": impl.forward_backward, "step": impl.step, "frozen_step": impl.step}[row]


def time_pair(fns: dict, min_reps: int, budget_s: float) -> dict:
    """Median seconds per framework, calling them alternately after two warm-up calls each."""
    for fn in fns.values():
        fn()
        fn()
    times = {k: [] for k in fns}
    start = time.perf_counter()
    while True:
        for k, fn in fns.items():
            # Both libraries' idle worker threads spin for a while after a parallel region
            # (OpenBLAS's and torch's OpenMP pool); a short pause lets them go to sleep so
            # that neither framework's timing pays for the other's spinning threads.
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        n = len(next(iter(times.values())))
        if n >= min_reps and time.perf_counter() - start > budget_s:
            break
        if n >= 50:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb(framework: str, batch: int = 16, size: int = 64, steps: int = 10) -> float:
    """Peak RSS of a fresh process doing ``steps`` full steps (MB), from /proc's VmHWM (the
    high-water mark of the new process image; getrusage's maxrss would carry the parent's
    peak over fork+exec)."""
    code = (
        "import sys; sys.argv=['x']; sys.path.insert(0, %r); import bench_resnet as b; "
        "import autotrain.memory as m; m.tune_malloc(); "
        "impl = (b.Ours if %r == 'autotrain' else b.Torch)(%d, %d); "
        "[impl.step() for _ in range(%d)]; "
        "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)"
    ) % (str(Path(__file__).resolve().parent), framework, batch, size, steps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), help=f"subset of {list(SHAPES)}")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"subset of {list(ROWS)}")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timing per row, at least")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tuned = tune_malloc()
    try:
        import torch

        have_torch = not args.no_torch
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    except ImportError:
        have_torch = False
    unset = os.environ.get("AUTOTRAIN_BENCH_UNSET")
    blas = blas_info()
    gemm = sgemm_gflops()
    header = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "numpy": np.__version__, "blas": blas, "sgemm_gflops": round(gemm, 1),
        "torch": (torch.__version__ if have_torch else None),
        "torch_threads": (torch.get_num_threads() if have_torch else None),
        "env_unset": unset or "none were set", "malloc_tuned": tuned,
    }
    print(f"autotrain benchmark: resnet18 width 64, float32; numpy {np.__version__}; "
          f"BLAS {blas.get('library')} {blas.get('version', '')} kernel {blas.get('kernel')} "
          f"threads {blas.get('threads')}; sgemm {gemm:.0f} GFLOP/s")
    print(f"calls alternate autotrain/torch, each after a {PAUSE_S * 1000:.0f} ms pause (idle BLAS/OpenMP "
          "threads stop spinning); medians after 2 warm-up calls each")
    print(f"unset for this process: {header['env_unset']}; glibc malloc tuned: {tuned}; "
          f"torch: {header['torch'] or 'not installed'}"
          + (f" ({header['torch_threads']} threads)" if have_torch else ""))
    results = []
    print(f"{'shape':<14}{'row':<18}{'autotrain ms':>13}{'torch ms':>10}{'ratio':>8}{'GFLOP/s':>9}{'% sgemm':>9}")
    for key in args.shapes:
        batch, size = SHAPES[key]
        fwd = conv_fc_flops(batch, size)
        models = {}  # (frozen?) -> {framework: model}, built only for the rows asked for

        def pair(frozen: bool) -> dict:
            if frozen not in models:
                models[frozen] = {"autotrain": Ours(batch, size, frozen=frozen)}
                if have_torch:
                    models[frozen]["torch"] = Torch(batch, size, frozen=frozen)
            return models[frozen]

        for row in args.rows:
            chosen = pair(row == "frozen_step")
            med = time_pair({k: _row_fn(v, row) for k, v in chosen.items()}, args.min_reps, args.budget)
            flops = fwd * FLOP_PASSES[row]
            ours = med["autotrain"]
            ratio = med["torch"] and ours / med["torch"] if "torch" in med else None
            gf = flops / ours / 1e9
            entry = {"shape": f"{batch}x3x{size}x{size}", "row": row, "autotrain_ms": ours * 1e3,
                     "torch_ms": med.get("torch", float("nan")) * 1e3 if "torch" in med else None,
                     "ratio": ratio, "gflops": gf, "frac_sgemm": gf / gemm}
            results.append(entry)
            print(f"{entry['shape']:<14}{row:<18}{ours * 1e3:>13.1f}"
                  f"{(entry['torch_ms'] or float('nan')):>10.1f}{(ratio or float('nan')):>8.2f}"
                  f"{gf:>9.1f}{100 * gf / gemm:>8.0f}%", flush=True)
    # The frozen step relative to a full step, which the finetune issue asks for.
    for key in args.shapes:
        batch, size = SHAPES[key]
        s = {r["row"]: r for r in results if r["shape"] == f"{batch}x3x{size}x{size}"}
        if "step" in s and "frozen_step" in s:
            print(f"{s['step']['shape']}: frozen step / full step (autotrain) = "
                  f"{s['frozen_step']['autotrain_ms'] / s['step']['autotrain_ms']:.2f}")
    rss = {}
    if not args.no_rss:
        rss["autotrain"] = peak_rss_mb("autotrain")
        if have_torch:
            rss["torch"] = peak_rss_mb("torch")
        print("peak RSS, 10 steps at 16x3x64x64: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": results, "peak_rss_mb": rss}, indent=2))


if __name__ == "__main__":
    main()
