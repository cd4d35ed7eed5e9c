"""Where a ResNet-18 training step spends its time, kernel by kernel (README's breakdown).

    python benchmarks/profile_step.py 16x64            # batch 16, 3x64x64, width 64
    python benchmarks/profile_step.py 8x224 --steps 3

Wraps every Function's forward and backward, the im2col/padding helpers of the convolution
and SGD.step with timers, runs warm-up steps, then averages over ``--steps`` full steps
(zero_grad, forward, cross-entropy, backward, SGD with momentum). The timers add a little
overhead, so the total is a few percent above the benchmark's step time. The convolutions'
"matmul and the rest" is their time minus im2col and padding: mostly the sgemm calls.
Like bench_resnet.py it unsets OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for its own process.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

_FORCED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _FORCED) and os.environ.get("AUTOTRAIN_BENCH_REEXEC") != "1":
    env = {k: v for k, v in os.environ.items() if k not in _FORCED}
    env["AUTOTRAIN_BENCH_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import autotrain as at  # noqa: E402
from autotrain.autograd import nn_ops, ops  # noqa: E402
from autotrain.autograd.function import Function  # noqa: E402
from autotrain.memory import tune_malloc  # noqa: E402

SHAPES = {"1x64": (1, 64), "16x64": (16, 64), "32x32": (32, 32), "8x224": (8, 224)}
TIMES: dict[str, float] = collections.defaultdict(float)
INSIDE: list[str] = []  # the kernel running now, so a helper's time is charged to its caller


def _timed(fn, key: str, kernel: bool = False):
    def wrapper(*args, **kwargs):
        if kernel:
            INSIDE.append(key.split()[0])
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[key if kernel or not INSIDE else f"{INSIDE[-1]} {key}"] += time.perf_counter() - start
            if kernel:
                INSIDE.pop()
    return wrapper


def instrument() -> None:
    for module in (ops, nn_ops):
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, Function) and cls is not Function:
                cls.forward = staticmethod(_timed(cls.forward, f"{cls.__name__} forward", kernel=True))
                cls.backward = staticmethod(_timed(cls.backward, f"{cls.__name__} backward", kernel=True))
    # Helpers the kernels call through module globals: wrapped in place, charged to the caller.
    nn_ops._im2col = _timed(nn_ops._im2col, "im2col")
    nn_ops._pad_nhwc = _timed(nn_ops._pad_nhwc, "padding")
    at.optim.SGD.step = _timed(at.optim.SGD.step, "SGD step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    batch, size = SHAPES[args.shape]
    tune_malloc()
    instrument()
    at.manual_seed(0)
    model = at.models.resnet18()
    opt = at.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.random((batch, 3, size, size), dtype=np.float32), rng.integers(0, 1000, batch)

    def step() -> None:
        opt.zero_grad()
        at.nn.functional.cross_entropy(model(at.tensor(x)), y).backward()
        opt.step()

    for _ in range(2):
        step()
    TIMES.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    total = (time.perf_counter() - start) / args.steps * 1e3
    per = {k: v / args.steps * 1e3 for k, v in TIMES.items()}
    print(f"{batch}x3x{size}x{size}, mean of {args.steps} steps with timers: {total:.1f} ms per step")
    conv = {d: per.get(f"Conv2d {d}", 0.0) for d in ("forward", "backward")}
    copies = per.get("Conv2d im2col", 0.0) + per.get("Conv2d padding", 0.0)
    print(f"  convolutions {sum(conv.values()):.1f} ms (forward {conv['forward']:.1f}, backward "
          f"{conv['backward']:.1f}); inside them im2col {per.get('Conv2d im2col', 0.0):.1f} + padding "
          f"{per.get('Conv2d padding', 0.0):.1f} ms, matmul and the rest {sum(conv.values()) - copies:.1f} ms")
    for key, ms in sorted(per.items(), key=lambda kv: -kv[1]):
        if not key.startswith("Conv2d") and ms >= 0.05:
            print(f"  {key:<24}{ms:8.1f} ms")


if __name__ == "__main__":
    main()
