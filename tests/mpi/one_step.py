"""One (or a few) data-parallel training steps, for tests/test_distributed.py:

    mpiexec -n N python tests/mpi/one_step.py OUT.npz STEPS DTYPE SYNC_BN BATCH

Builds the tiny config's model and data, takes the first STEPS global batches of epoch 0,
runs the trainer's own train_step on this rank's shard of each (the communicator of
autotrain.distributed), and rank 0 writes every parameter and buffer to OUT.npz (and after
each earlier step K to OUT-stepK.npz). DTYPE
float64 casts the model and batches to float64 (the engine runs either).
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from autotrain import distributed  # noqa: E402
from autotrain.config import load_config  # noqa: E402
from autotrain.nn import BatchNorm2d  # noqa: E402
from autotrain.optim import SGD  # noqa: E402
from autotrain.train.loop import train_step  # noqa: E402
from autotrain.train.run import load_data, make_loaders  # noqa: E402
from autotrain.train.setup import build_model  # noqa: E402

out, steps, dtype, sync_bn, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
comm = distributed.init()
cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"train.batch_size={batch}", "data.augment.crop_padding=1"])
data = load_data(cfg)
loader, _ = make_loaders(cfg, data)
model = build_model(cfg, None).model
if dtype == "float64":
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data.dtype == np.float32:
            t.data = t.data.astype(np.float64)
model.train()
opt = SGD([p for p in model.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4)
for b in range(steps):
    n = len(loader.batch_indices(0, b))
    for m in model.modules():  # as the trainer: only a batch split over the ranks syncs
        if isinstance(m, BatchNorm2d):
            m.stats_reduce = comm.sum if sync_bn and comm.splits(n) else None
    x, y = loader.batch(0, b, comm.shard(n) if comm.size > 1 else None)
    train_step(model, opt, x.astype(dtype), y, f"step {b + 1}", comm, n)
    if comm.is_writer and b + 1 < steps:  # the state after each earlier step too: OUT-stepK.npz
        np.savez(out.replace(".npz", f"-step{b + 1}.npz"), **model.state_dict())
if comm.is_writer:
    np.savez(out, **model.state_dict())
