"""A/B of gradient bucket sizes inside one 2-rank job (needs bucketed_overlap.patch applied):
blocks of 8 steps per bucket size, alternated for R rounds; the median step time of each.
Arguments: SIZES_MB ROUNDS [w64 BLOCK]."""
import sys, time, json, statistics
sys.path.insert(0, ".")  # run from the patched checkout
import numpy as np
from autotrain import distributed, models
from autotrain.config import load_config
from autotrain.optim import SGD
from autotrain.train.loop import train_step
from autotrain.train.run import load_data, make_loaders
modes = [float(m) for m in sys.argv[1].split(",")]; rounds = int(sys.argv[2]); block = int(sys.argv[4]) if len(sys.argv) > 4 else 8
w64 = len(sys.argv) > 3 and sys.argv[3] == "w64"
comm = distributed.init()
cfg = load_config("configs/digits.yaml")
loader, _ = make_loaders(cfg, load_data(cfg))
model = models.resnet18(num_classes=10, in_channels=1, width=16, stem="small")
batches = [loader.batch(0, b, comm.shard(64)) for b in range(block + 1)]
G = 64
if w64:
    G = 32
    rng = np.random.default_rng(0); part = comm.shard(32)
    x = rng.standard_normal((32, 3, 64, 64)).astype(np.float32)[part]; y = rng.integers(0, 10, 32)[part]
    model = models.resnet18(num_classes=10, in_channels=3, width=64, stem="imagenet")
    batches = [(x, y)] * (block + 1)
model.train()
opt = SGD(list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
res = {m: [] for m in modes}
for r in range(rounds):
    for m in modes:
        comm.bucket_bytes = int(m * 2**20)
        x, y = batches[0]; train_step(model, opt, x, y, "w", comm, G)
        comm.barrier(); t = time.perf_counter()
        for x, y in batches[1:]:
            train_step(model, opt, x, y, "w", comm, G)
        comm.barrier(); res[m].append(1e3 * (time.perf_counter() - t) / block)
if comm.rank == 0:
    for m in modes:
        print(m, "median %.2f ms  mean %.2f" % (statistics.median(res[m]), statistics.mean(res[m])))
