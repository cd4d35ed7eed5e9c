"""Fault timings of data-parallel training and the N=1 vs N=2 whole-run difference.

    python benchmarks/distributed_faults.py      # ~2 minutes; writes distributed_faults_last_run.json

Runs the tiny config as tests/test_distributed.py does (sync_bn, batch 30, 2 epochs for the
whole runs; 50 epochs for the runs that get a signal 1.5 s into training) under
``mpiexec -n 2`` from the mpi extra, three trials each: ``kill -9`` of rank 1 (seconds from the
kill to the end of mpiexec, what is left in the run folder), SIGTERM to mpiexec, SIGINT to
rank 1 alone (exit code, seconds to the end, the error lines); NaN on rank 1 only (the fault
hook); then N=1 and N=2 runs to the end: validation accuracy and the weight difference.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests")); sys.path.insert(0, str(ROOT))
import numpy as np
from fault_helpers import HELPER, cli_env
from test_distributed import train_args, worst_relative
from autotrain.io import load_checkpoint
M = str(Path(sys.executable).parent / "mpiexec")
import shutil
import tempfile
base = Path(tempfile.mkdtemp(prefix="distributed_faults_"))

def ranks(pid):
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                env = (p / "environ").read_bytes().split(b"\0")
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"fault_helper" in cmd or b"autotrain" in cmd:
                for e in env:
                    if e.startswith(b"PMI_RANK="):
                        out[int(e[9:])] = int(p.name)
    return out

def start(run, *sets):
    return subprocess.Popen([M, "-n", "2", sys.executable, str(HELPER), *train_args(run, "train.epochs=50", *sets)],
                            cwd=base, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def wait_training(proc, run):
    while not (run / "config.yaml").exists():
        assert proc.poll() is None; time.sleep(0.05)
    time.sleep(1.5)

res = {}
for trial in range(3):
    run = base / f"kill{trial}"; proc = start(run); wait_training(proc, run)
    r = ranks(proc.pid); t = time.monotonic(); os.kill(r[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    res.setdefault("kill9_rank1", []).append({"exit": proc.returncode, "seconds_to_end": round(time.monotonic() - t, 2),
        "left": sorted(p.name for p in run.iterdir())})
    run = base / f"term{trial}"; proc = start(run); wait_training(proc, run)
    t = time.monotonic(); proc.send_signal(signal.SIGTERM); out, err = proc.communicate(timeout=120)
    res.setdefault("sigterm_mpiexec", []).append({"exit": proc.returncode, "seconds_to_end": round(time.monotonic() - t, 2),
        "error_lines": [l for l in err.splitlines() if l.startswith("error:")],
        "step": load_checkpoint(run / "last.safetensors").metadata["position"]["step"]})
    run = base / f"int{trial}"; proc = start(run); wait_training(proc, run)
    r = ranks(proc.pid); t = time.monotonic(); os.kill(r[1], signal.SIGINT); out, err = proc.communicate(timeout=120)
    res.setdefault("sigint_rank1", []).append({"exit": proc.returncode, "seconds_to_end": round(time.monotonic() - t, 2),
        "error_lines": [l for l in err.splitlines() if l.startswith("error:")]})
# NaN on rank 1 only
run = base / "nan"
t = time.monotonic()
p = subprocess.run([M, "-n", "2", sys.executable, str(HELPER), *train_args(run)], cwd=base,
                   env=cli_env({"AUTOTRAIN_TEST_FAULTS": json.dumps({"rank": 1, "nan_at_step": 4})}), capture_output=True, text=True)
res["nan_rank1"] = {"exit": p.returncode, "error_lines": [l for l in p.stderr.splitlines() if l.startswith("error:")],
                    "left": sorted(x.name for x in run.iterdir())}
# whole runs N=1 vs N=2 (sync_bn, tiny, 2 epochs)
for n in (1, 2):
    subprocess.run([M, "-n", str(n), sys.executable, str(HELPER), *train_args(base / f"run{n}")], cwd=base, env=cli_env(), check=True, capture_output=True)
a, b = load_checkpoint(base / "run1/last.safetensors"), load_checkpoint(base / "run2/last.safetensors")
per = {k: float(np.abs(a.model_state[k].astype(np.float64) - b.model_state[k]).max() / max(np.abs(a.model_state[k]).max(), 1e-30))
       for k in a.model_state if a.model_state[k].dtype.kind == "f"}
worst = max(per, key=per.get)
res["n1_vs_n2"] = {"val_acc": [a.metadata["history"][-1]["val_acc"], b.metadata["history"][-1]["val_acc"]],
                   "worst_relative_all": worst_relative(a.model_state, b.model_state),
                   "worst_tensor": [worst, per[worst]], "median_tensor": float(np.median(list(per.values())))}
shutil.rmtree(base)
print(json.dumps(res, indent=1))
(ROOT / "benchmarks" / "distributed_faults_last_run.json").write_text(json.dumps(res, indent=1))
