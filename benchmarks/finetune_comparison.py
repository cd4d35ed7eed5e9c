"""Pretrained vs random backbone on the shipped few-label task, as README's Finetuning reports.

Runs the real ``autotrain finetune`` (the shipped ``configs/finetune.yaml`` unless --config)
once per (setting, backbone, seed), in a subprocess with BLAS pinned to one thread (so a rerun
gives the same floats), and reads each run's metrics.csv. Both backbones of a pair get the
same epochs, lr, batch size, bn setting, seed (so the same new head, batches and augmentation);
the random one is ``--set model.weights=null``.

Settings:
  frozen  ``--freeze-backbone``: only the new head trains, for --frozen-epochs
  full    ``--freeze-backbone --set finetune.unfreeze_at_epoch=K``: the head trains alone for K
          epochs, then everything thaws, the backbone at lr x finetune.backbone_lr_mult

Each run reports its best validation accuracy, the epoch it was reached, and its validation
curve. A run counts as trained "until validation accuracy stopped improving" when its last
quarter of epochs (lr below 15 % of its peak under the cosine schedule) adds at most
PLATEAU_POINTS to the best accuracy before it; the table flags any run that does not.

Usage:
  python benchmarks/finetune_comparison.py --seeds 0 1 2 --json benchmarks/finetune_comparison.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'autotrain'; from autotrain.cli import main; main()"]
PLATEAU_POINTS = 0.5  # 10 of the 2,000 validation images
BACKBONES = {"pretrained": [], "random": ["--set", "model.weights=null"]}


def setting_args(setting: str, args: argparse.Namespace) -> list[str]:
    """The CLI overrides of one setting (the backbone's are added by the caller)."""
    if setting == "frozen":
        return ["--freeze-backbone", "--set", f"train.epochs={args.frozen_epochs}"]
    return ["--freeze-backbone", "--set", f"train.epochs={args.full_epochs}",
            "--set", f"finetune.unfreeze_at_epoch={args.unfreeze_at}",
            "--set", f"finetune.backbone_lr_mult={args.backbone_lr_mult}"]


def run_one(config: list[str], overrides: list[str], workdir: Path) -> dict:
    """One ``autotrain finetune`` run; its best val accuracy, that epoch, and the run's time."""
    out = workdir / "run"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [*CLI, "finetune", *config, *overrides, "--set", f"output.dir={out}", "--overwrite", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])}: exit {done.returncode}\n{done.stderr}")
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_acc"]]
    best = max(rows, key=lambda r: float(r["val_acc"]))  # first epoch reaching the maximum
    epochs = int(rows[-1]["epoch"])
    curve = [(int(r["epoch"]), float(r["val_acc"])) for r in rows]
    return {"best_val_acc": float(best["val_acc"]), "best_epoch": int(best["epoch"]), "epochs": epochs,
            "final_val_acc": float(rows[-1]["val_acc"]), "seconds": round(seconds, 1),
            **plateau(curve, epochs), "val_curve": curve}


def plateau(curve: list[tuple[int, float]], epochs: int) -> dict:
    """What the last quarter of the epochs added to the best accuracy before it, in points
    (rounded to 0.01: 0.5 must not read as 0.50000001), and whether that is <= PLATEAU_POINTS."""
    before = max([acc for epoch, acc in curve if epoch <= 0.75 * epochs], default=0.0)
    gain = round(100 * (max(acc for _, acc in curve) - before), 2)
    return {"last_quarter_gain_points": gain, "plateaued": gain <= PLATEAU_POINTS}


def retable(path: Path) -> None:
    """Recompute the plateau flags from the stored curves and rewrite the table (no runs)."""
    report = json.loads(path.read_text())
    for by_backbone in report["results"].values():
        for runs in by_backbone.values():
            for r in runs:
                r.update(plateau([tuple(point) for point in r["val_curve"]], r["epochs"]))
    report["table"] = table(report["results"], report["seeds"])
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(report["table"])


def table(results: dict, seeds: list[int]) -> str:
    """A markdown table: one row per (setting, backbone), mean and each seed, and the gap."""
    lines = ["| setting | backbone | mean | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for setting, by_backbone in results.items():
        means = {}
        for backbone, runs in by_backbone.items():
            accs = [r["best_val_acc"] for r in runs]
            means[backbone] = statistics.mean(accs)
            cells = [f"{100 * r['best_val_acc']:.2f} % (ep {r['best_epoch']}/{r['epochs']}"
                     f"{'' if r['plateaued'] else ', still rising'})" for r in runs]
            lines.append(f"| {setting} | {backbone} | **{100 * means[backbone]:.2f} %** | " + " | ".join(cells) + " |")
        if len(means) == 2:
            gaps = [100 * (p["best_val_acc"] - r["best_val_acc"]) for p, r in zip(by_backbone["pretrained"], by_backbone["random"])]
            lines.append(f"| {setting} | pretrained - random | **{100 * (means['pretrained'] - means['random']):+.2f} points** | "
                         + " | ".join(f"{g:+.2f}" for g in gaps) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="finetune config (default: the shipped one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=["frozen", "full"], default=["frozen", "full"])
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--frozen-epochs", type=int, default=40)
    parser.add_argument("--full-epochs", type=int, default=40)
    parser.add_argument("--unfreeze-at", type=int, default=10)
    parser.add_argument("--backbone-lr-mult", type=float, default=0.1)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra --set KEY=VALUE for every run (the same for both backbones)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one core)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument("--retable", type=Path, default=None,
                        help="only recompute the plateau flags and table of this JSON report")
    args = parser.parse_args(argv)
    if args.retable:
        retable(args.retable)
        return 0

    config = [str(args.config)] if args.config else []
    extra = [a for o in args.overrides for a in ("--set", o)]
    jobs = [(setting, backbone, seed) for setting in args.settings for backbone in args.backbones
            for seed in args.seeds]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:

        def one(job: tuple[str, str, int]) -> dict:
            setting, backbone, seed = job
            overrides = [*setting_args(setting, args), *BACKBONES[backbone], *extra, "--set", f"seed={seed}"]
            workdir = Path(tmp) / f"{setting}-{backbone}-{seed}"
            workdir.mkdir()
            r = {"seed": seed, **run_one(config, overrides, workdir)}
            print(f"{setting} {backbone} seed {seed}: best val_acc {r['best_val_acc']:.4f} "
                  f"at epoch {r['best_epoch']}/{r['epochs']} ({r['seconds']} s)", flush=True)
            return r

        # Each run is its own single-threaded process: --jobs 2 uses two cores.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(one, jobs))
    results: dict[str, dict[str, list[dict]]] = {}
    for (setting, backbone, _), r in zip(jobs, done):
        results.setdefault(setting, {}).setdefault(backbone, []).append(r)
    print()
    print(table(results, args.seeds))
    if args.json:
        report = {"command": "python benchmarks/finetune_comparison.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "config": str(args.config or "configs/finetune.yaml (shipped)"), "overrides": args.overrides,
                  "frozen_epochs": args.frozen_epochs, "full_epochs": args.full_epochs,
                  "unfreeze_at_epoch": args.unfreeze_at, "backbone_lr_mult": args.backbone_lr_mult,
                  "seeds": args.seeds, "results": results, "table": table(results, args.seeds),
                  "total_seconds": round(time.perf_counter() - start, 1)}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
