"""README's main job (configs/digits.yaml) written in torch 2.13, for bench_distributed.py --jobs.

The same split, batches and augmentation (autotrain's own loader hands torch the NumPy
batches), the same architecture (tests/torch_reference.py: torchvision's resnet18 layout,
width 16, small stem, 1 input channel), SGD with the same momentum and weight decay, the
per-step cosine schedule and an evaluation of the validation split after every epoch. Prints
the wall time of the training loop and the final validation accuracy. Benchmark only: torch
is never imported by autotrain.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from torch_reference import resnet18  # noqa: E402

from autotrain.config import load_config  # noqa: E402
from autotrain.optim import scheduled_lr  # noqa: E402
from autotrain.train.run import load_data, make_loaders  # noqa: E402


def main() -> None:
    cfg = load_config(ROOT / "configs" / "digits.yaml")
    train, val = make_loaders(cfg, load_data(cfg))
    torch.manual_seed(cfg.seed)
    model = resnet18(num_classes=cfg.model.num_classes, in_channels=cfg.model.in_channels,
                     width=cfg.model.width, stem=cfg.model.stem)
    o, s = cfg.optimizer, cfg.schedule
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                          nesterov=o.nesterov, dampening=o.dampening)
    start, step, acc = time.perf_counter(), 0, float("nan")
    for epoch in range(cfg.train.epochs):
        model.train()
        for x, y in train.epoch(epoch):
            for g in opt.param_groups:
                g["lr"] = scheduled_lr(o.lr, s.name, step, len(train), cfg.train.epochs, s.warmup_epochs,
                                       s.step_size, s.gamma)
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for x, y in val.epoch(0):
                correct += int((model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
                count += len(y)
        acc = correct / count
    print(f"torch {torch.__version__}: {cfg.train.epochs} epochs in {time.perf_counter() - start:.1f} s, "
          f"final val_acc {acc:.4f}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
