"""Benchmark of the uint8 data cache (issue 11): decode once, read memory-mapped, stream.

    python benchmarks/bench_data.py --work /tmp/bench_data --json benchmarks/data_last_run.json

1. Generates an ImageFolder of 40,000 RGB PNGs at 64x64 (10 classes; smooth random colour
   fields plus noise, so PNG compression is photo-like rather than best or worst case),
   and the 5,000- and 20,000-image folders as hard links to its first files per class.
2. For each folder, in fresh processes:
   - first run: ``load_dataset`` with an empty cache (decode into the cache file): seconds,
     images/s, cache bytes per image, peak RssAnon of the loading process;
   - second run: from interpreter start to the first training step done (cache read,
     statistics, loaders, model, one step);
   - one epoch of ``autotrain train`` (width-8 resnet18, ``--stem`` imagenet by default,
     image_size 64, batch 64,
     crop_padding 4 + hflip, val_fraction 0.2) with RssAnon of the process sampled from
     /proc every 20 ms (memory-mapped pages are file-backed: they count in RssFile, not
     RssAnon), and the epoch's training-loop seconds from metrics.csv.
3. The previous code's in-RAM float32 path (``--baseline`` commit, unpacked with git
   archive) runs the same epoch on the 5,000-image folder, alternating with the new code.
4. Prefetching the next batch in a thread vs not: ms per step, same process, alternating.

``--second-run-only`` and ``--batch-prep-only`` re-measure one part on existing folders and
caches; the latter times the data path alone (gather, augment, float, normalise) for the
cache and for float32 arrays in RAM, alternating batch by batch, over one epoch.

Figures depend on the machine and on what else runs on it; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import io
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (5000, 20000, 40000)
CLASSES = 10
SIDE = 64


def generate(root: Path, count: int, seed: int = 0) -> None:
    """``count`` PNGs in CLASSES folders (skipped when the folder is already complete)."""
    from PIL import Image

    per_class = count // CLASSES
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == count:
        return
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        tint = rng.integers(40, 216, 3)
        for i in range(per_class):
            coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32) * 0.5 + tint * 0.5
            field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC),
                               dtype=np.float32)
            noisy = np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i:05d}.png")


def link_subset(source: Path, root: Path, count: int) -> None:
    """The first count / CLASSES files of each class of ``source``, hard-linked under ``root``."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == count:
        return
    shutil.rmtree(root, ignore_errors=True)
    for folder in sorted(source.iterdir()):
        (root / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[: count // CLASSES]:
            os.link(path, root / folder.name / path.name)


def child_env(pythonpath: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), NO_COLOR="1", TERM="dumb")
    env.pop("AUTOTRAIN_CACHE_DIR", None)
    return env


class RssSampler:
    """Peak RssAnon (and RssFile) of a process, read from /proc/<pid>/status every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.anon, self.file = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
                self.anon = max(self.anon, int(fields["RssAnon"].split()[0]) * 1024)
                self.file = max(self.file, int(fields["RssFile"].split()[0]) * 1024)
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_sampled(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, RssSampler, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(proc.pid)
    out, err = proc.communicate()
    sampler.stop()
    seconds = time.perf_counter() - start
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out[-2000:]}\n{err[-2000:]}")
    return done, sampler, seconds


FIRST_RUN = """
import sys, time, json
t0 = time.perf_counter()
from autotrain.data import load_dataset
splits = load_dataset("imagefolder", sys.argv[1], 64, 3, 10, val_fraction=0.2, seed=0, cache=sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t0, "info": splits.info["cache"]}))
"""

SECOND_RUN = """
import sys, time, json
from autotrain.config import load_config
from autotrain.train.run import load_data, make_loaders
from autotrain.train.setup import build_model
from autotrain.train.loop import train_step
from autotrain.optim import SGD
cfg = load_config(sys.argv[1], sys.argv[2:])
data = load_data(cfg)
loaded = time.time()
train_loader, _ = make_loaders(cfg, data)
setup = build_model(cfg, None)
x, y = next(train_loader.epoch(0))
ready = time.time()
opt = SGD(setup.model.parameters(), lr=0.01, momentum=0.9)
train_step(setup.model, opt, x, y, "bench")
print(json.dumps({"loaded": loaded, "ready": ready, "first_step": time.time(),
                  "status": data.info["cache"]["status"]}))
"""

PREFETCH = """
import sys, time, json
from autotrain.config import load_config
from autotrain.train.run import load_data, make_loaders
from autotrain.train.setup import build_model
from autotrain.train.loop import train_step
from autotrain.optim import SGD
cfg = load_config(sys.argv[1], sys.argv[2:])
data = load_data(cfg)
loader, _ = make_loaders(cfg, data)
setup = build_model(cfg, None)
opt = SGD(setup.model.parameters(), lr=0.01, momentum=0.9)
steps, result = min(20, len(loader) - 1), {"off": [], "on": []}
prep = []
for b in range(steps):
    t = time.perf_counter(); loader.batch(0, b); prep.append(time.perf_counter() - t)
for rep in range(2):
    for mode in ("off", "on"):
        loader.prefetch = mode == "on"
        batches = loader.epoch(rep, 0)
        next(batches)
        t = time.perf_counter()
        for _, (x, y) in zip(range(steps), batches):
            train_step(setup.model, opt, x, y, "bench")
        result[mode].append((time.perf_counter() - t) / steps * 1000)
print(json.dumps({"ms_per_step": result, "batch_prepare_ms": 1000 * float(sorted(prep)[len(prep) // 2])}))
"""


STEM = "imagenet"


BATCH_PREP = """
import sys, time, json
import numpy as np
from autotrain.data import AugmentSpec, BatchLoader, load_dataset
splits = load_dataset("imagefolder", sys.argv[1], 64, 3, 10, val_fraction=0.2, seed=0, cache=sys.argv[2])
spec = AugmentSpec(crop_padding=4, hflip=True)
rows = BatchLoader(splits.train_x, splits.train_y, 64, splits.mean, splits.std, seed=0, augment=spec)
floats = BatchLoader(np.asarray(splits.train_x), splits.train_y, 64, splits.mean, splits.std, seed=0, augment=spec)
times = {"in_ram_float32": [], "cache_uint8_memory_mapped": []}
for b in range(len(rows)):  # alternating batch by batch: the machine's load hits both alike
    for name, loader in (("in_ram_float32", floats), ("cache_uint8_memory_mapped", rows)):
        t = time.perf_counter()
        loader.batch(0, b)
        times[name].append(time.perf_counter() - t)
print(json.dumps({k: {"median_ms": round(1000 * float(np.median(v)), 2), "total_s": round(float(np.sum(v)), 2)}
                  for k, v in times.items()}))
"""


def config_args(folder: Path, cache: str, out: Path) -> list[str]:
    return ["--set", f"model.stem={STEM}","--set", f"data.path={folder}", "--set", f"data.cache={cache}", "--set", f"output.dir={out}",
            "--set", "model.num_classes=10", "--set", "model.in_channels=3", "--set", "model.width=8",
            "--set", "data.image_size=64", "--set", "data.val_fraction=0.2", "--set", "train.epochs=1",
            "--set", "train.batch_size=64", "--set", "schedule.warmup_epochs=0",
            "--set", "data.augment.crop_padding=4", "--set", "data.augment.hflip=true"]


def epoch_run(folder: Path, cache: str, out: Path, work: Path, code: Path = ROOT) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-c", "import sys; sys.argv[0]='autotrain'; from autotrain.cli import main; main()",
            "train", str(ROOT / "configs" / "imagefolder.yaml"), "-q"]
    extra = config_args(folder, cache, out)
    if code != ROOT:  # the old code has no data.cache key
        extra = [a for i, a in enumerate(extra) if not a.startswith("data.cache") and
                 not (a == "--set" and extra[i + 1].startswith("data.cache"))]
    done, sampler, wall = run_sampled(args + extra, child_env(code), work)
    with open(out / "metrics.csv") as handle:
        row = next(csv.DictReader(handle))
    return {"epoch_seconds": float(row["seconds"]), "images_per_s": float(row["images_per_s"]),
            "val_acc": float(row["val_acc"]), "wall_seconds": round(wall, 2),
            "peak_rss_anon_mb": round(sampler.anon / 1e6, 1), "peak_rss_file_mb": round(sampler.file / 1e6, 1)}


def second_run(folder: Path, cache: Path, work: Path) -> dict:
    """Seconds from starting a fresh interpreter to the data loaded from the cache, to the
    first batch and the model ready, and to the first training step done."""
    start = time.time()
    cfg_args = [str(ROOT / "configs" / "imagefolder.yaml"), *[a for a in config_args(folder, str(cache), work / "unused")
                                                               if a != "--set"]]
    done = subprocess.run([sys.executable, "-c", SECOND_RUN, *cfg_args], env=child_env(), cwd=work,
                          capture_output=True, text=True, check=True)
    second = json.loads(done.stdout.strip().splitlines()[-1])
    assert second["status"] == "read", second
    return {"start_to_data_loaded_s": round(second["loaded"] - start, 2),
            "start_to_first_batch_and_model_ready_s": round(second["ready"] - start, 2),
            "start_to_first_step_done_s": round(second["first_step"] - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_data"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--baseline", default="", help="git commit of the in-RAM float32 code to compare with")
    parser.add_argument("--stem", default="imagenet", choices=("imagenet", "small"),
                        help="model.stem of the epoch runs (small keeps 64x64 maps through layer1: its "
                             "activations alone take ~800 MB at batch 64)")
    parser.add_argument("--second-run-only", action="store_true",
                        help="measure only the second-run start again (the cache files must exist); "
                             "updates the 'second_run' entries of an existing --json file")
    parser.add_argument("--batch-prep-only", action="store_true",
                        help="time one epoch of batch preparation (gather, augment, to float, normalise) "
                             "from the cache and from float32 arrays in RAM, alternating batch by batch, "
                             "on the largest folder (its cache file must exist)")
    args = parser.parse_args()
    global STEM
    STEM = args.stem
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count(), "stem": STEM,
                    "model": "resnet18 width 8, image_size 64, batch 64, crop_padding 4 + hflip, val_fraction 0.2",
                    "sizes": {}}

    if args.batch_prep_only:
        report = json.loads(args.json.read_text()) if args.json and args.json.exists() else report
        count = max(args.sizes)
        done = subprocess.run([sys.executable, "-c", BATCH_PREP, str(work / f"images{count}"),
                               str(work / "cache" / f"images{count}.atcache")], env=child_env(), cwd=work,
                              capture_output=True, text=True, check=True)
        report["batch_prepare"] = {"images": count, **json.loads(done.stdout.strip().splitlines()[-1])}
        print(report["batch_prepare"], flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return
    if args.second_run_only:
        report = json.loads(args.json.read_text()) if args.json and args.json.exists() else report
        for count in args.sizes:
            entry = report["sizes"].setdefault(str(count), {})
            entry["second_run"] = second_run(work / f"images{count}", work / "cache" / f"images{count}.atcache", work)
            print(count, "second run", entry["second_run"], flush=True)
        report["second_run_load_average"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return

    t = time.perf_counter()
    largest = max(args.sizes)
    generate(work / f"images{largest}", largest)
    for count in args.sizes:
        if count != largest:
            link_subset(work / f"images{largest}", work / f"images{count}", count)
    report["generate_seconds"] = round(time.perf_counter() - t, 1)
    print(f"generated in {report['generate_seconds']} s", flush=True)

    def save() -> None:  # after every stage: a long run stopped early keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    for count in args.sizes:
        folder, cache = work / f"images{count}", work / "cache" / f"images{count}.atcache"
        cache.unlink(missing_ok=True)
        cache.parent.mkdir(exist_ok=True)
        entry: dict = report["sizes"].setdefault(str(count), {})
        done, sampler, _ = run_sampled([sys.executable, "-c", FIRST_RUN, str(folder), str(cache)], child_env(), work)
        first = json.loads(done.stdout.strip().splitlines()[-1])
        assert first["info"]["status"] == "built", first
        entry["first_run"] = {"decode_seconds": round(first["seconds"], 2),
                              "images_per_s": round(count / first["seconds"], 1),
                              "peak_rss_anon_mb": round(sampler.anon / 1e6, 1),
                              "cache_bytes": first["info"]["bytes"],
                              "cache_bytes_per_image": round(first["info"]["bytes"] / count, 1)}
        print(count, "first run", entry["first_run"], flush=True)

        entry["second_run"] = second_run(folder, cache, work)
        print(count, "second run", entry["second_run"], flush=True)
        save()

    smallest = min(args.sizes)
    folder, cache = work / f"images{smallest}", work / "cache" / f"images{smallest}.atcache"
    if args.baseline:
        old = work / "baseline"
        shutil.rmtree(old, ignore_errors=True)
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(old)
        runs = {"in_ram_float32_baseline": [], "cache_memory_mapped": []}
        report["baseline"] = {"commit": args.baseline, "images": smallest, "runs": runs}
        for _ in range(2):  # alternating, so that a change in machine load hits both
            runs["in_ram_float32_baseline"].append(epoch_run(folder, "off", work / "run_old", work, old))
            runs["cache_memory_mapped"].append(epoch_run(folder, str(cache), work / "run_new", work))
            print("baseline", json.dumps(runs), flush=True)
            save()
        report["sizes"][str(smallest)]["epoch"] = runs["cache_memory_mapped"][-1]

    for count in args.sizes:
        entry = report["sizes"][str(count)]
        if "epoch" not in entry:
            entry["epoch"] = epoch_run(work / f"images{count}", str(work / "cache" / f"images{count}.atcache"),
                                       work / f"run{count}", work)
            print(count, "epoch", entry["epoch"], flush=True)
            save()

    cfg_args = [str(ROOT / "configs" / "imagefolder.yaml"), *[a for a in config_args(folder, str(cache), work / "unused")
                                                               if a != "--set"]]
    done = subprocess.run([sys.executable, "-c", PREFETCH, *cfg_args], env=child_env(), cwd=work,
                          capture_output=True, text=True, check=True)
    report["prefetch"] = json.loads(done.stdout.strip().splitlines()[-1])
    print("prefetch", report["prefetch"], flush=True)
    report["load_average_end"] = os.getloadavg()
    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
