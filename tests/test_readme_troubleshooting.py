"""README's Troubleshooting tables, executed: every row's case is reproduced through the real
``autotrain`` command, and its exit code and its exact message are those the row states.

The rows are read from README.md itself, so the table cannot drift from the program: a changed
message, a new row without a reproduction here, or a reproduction without a row fails. A
message cell holds one or more backticked lines; each must be a whole line of the command's
output (stderr, or stdout for the informational ones), in that order. ``...`` in a message
stands for any text (a long temporary path or a library's wording). Rows whose message cell
describes an outcome in words (``(resumes; ...)``, ``ignored``) are checked by the named
assertion beside their case.
"""

from __future__ import annotations

import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from fault_helpers import ROOT, TINY, check_run_folder, run_cli, run_forked, temp_files, tree
from PIL import Image

README = ROOT / "README.md"
WEIGHTS = ROOT / "tests" / "fixtures" / "weights"
TINY_TEXT = TINY.read_text()


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    table: str
    case: str
    exit: int | None  # None: "-" (not a command outcome)
    messages: tuple[str, ...]
    cell: str


def readme_rows() -> list[Row]:
    """Every row of every table under README's "## Troubleshooting"."""
    text = README.read_text()
    section = text[text.index("## Troubleshooting"):]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    rows, table = [], ""
    for line in section.splitlines():
        if line.startswith("**"):
            table = line.split("**")[1]
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| case |"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, f"README row with {len(cells)} cells: {line}"
        case, code, cell = cells
        # A command named in prose (`autotrain config show`) is not one of its lines.
        messages = tuple(m for m in re.findall(r"`([^`]+)`", cell)
                         if not cell.startswith("(") and not m.startswith("autotrain "))
        rows.append(Row(table, case, None if code == "-" else int(code), messages, cell))
    return rows


def line_pattern(message: str) -> re.Pattern:
    return re.compile("^" + ".*".join(re.escape(part) for part in message.split("...")) + "$")


# --------------------------------------------------------------------------- reproductions


@dataclass
class Case:
    """One row's reproduction: the command (in its own empty folder, prepared by ``make``)
    and, where the message cell is prose, what it states (``check(result, cwd)``)."""

    args: list[str]
    make: Callable[[Path], None] = lambda cwd: None
    faults: dict | None = None
    check: Callable | None = None
    stream: str = "stderr"
    extra: dict = field(default_factory=dict)


def tiny_with(old: str, new: str) -> str:
    assert TINY_TEXT.count(old) == 1, old
    return TINY_TEXT.replace(old, new)


def train(*sets: str, config: str = str(TINY), command: str = "train") -> list[str]:
    args = [command, config, "-q"]
    for s in sets:
        args += ["--set", s]
    return args


def config_case(text: str) -> Case:
    return Case(["train", "config.yaml", "-q", "--set", "output.dir=out"],
                make=lambda cwd: (cwd / "config.yaml").write_text(text))


def weights_case(name: str, data: Callable[[], bytes], command: str = "convert") -> Case:
    args = ["convert", name, "out.safetensors"] if command == "convert" else \
        train("output.dir=run", "train.epochs=1", command="finetune") + ["--weights", name]
    return Case(args, make=lambda cwd: (cwd / name).write_bytes(data()))


def _tiny_safetensors() -> bytes:
    from test_faults_weights import safetensors_bytes, tiny_state

    return safetensors_bytes(tiny_state())


def _edited(edit_name: str) -> Callable[[], bytes]:
    def make() -> bytes:
        import test_faults_weights as fw

        return fw.edited(_tiny_safetensors(), getattr(fw, edit_name))
    return make


def _copy(src: Path, name: str) -> Callable[[Path], None]:
    return lambda cwd: shutil.copyfile(src, cwd / name)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _good_images(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        _png(folder / f"img{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


def imagefolder(*sets: str) -> list[str]:
    return train("data.source=imagefolder", "data.path=images", "data.classes=null", "model.num_classes=2",
                 "model.in_channels=3", "output.dir=run", "train.epochs=1", *sets)


def _mixed_images(cwd: Path) -> None:
    _good_images(cwd / "images" / "cat", 8, 0)
    _good_images(cwd / "images" / "dog", 8, 1)
    (cwd / "images" / "cat" / "empty.png").write_bytes(b"")
    (cwd / "images" / "cat" / "notes.png").write_text("not an image\n")
    good = cwd / "images" / "dog" / "img0.png"
    (cwd / "images" / "dog" / "cut.png").write_bytes(good.read_bytes()[:40])


def _hidden(cwd: Path) -> None:
    _good_images(cwd / "images" / "cat", 8, 0)
    _good_images(cwd / "images" / "dog", 8, 1)
    _good_images(cwd / "images" / ".cache", 3, 2)
    _good_images(cwd / "images" / "cat" / ".thumbs", 3, 3)


def _rgba_16bit(cwd: Path) -> None:
    _good_images(cwd / "images" / "cat", 8, 0)
    _good_images(cwd / "images" / "dog", 8, 1)
    rng = np.random.default_rng(4)
    _png(cwd / "images" / "cat" / "rgba.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA")
    _png(cwd / "images" / "dog" / "deep.png", rng.integers(0, 65536, (8, 8), dtype=np.uint16))


def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def _idx_pair(folder: Path, images: int, labels: int, image_magic: int = 2051) -> None:
    _idx(folder / "train-images-idx3-ubyte", np.zeros((images, 8, 8), np.uint8), image_magic)
    _idx(folder / "train-labels-idx1-ubyte", (np.arange(labels) % 3).astype(np.uint8), 2049)


def _npz(cwd: Path, x: np.ndarray, y: np.ndarray) -> None:
    np.savez(cwd / "data.npz", x=x, y=y)


def _nan_pixels(cwd: Path) -> None:
    x = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32)
    x[13, 2, 3] = np.nan
    _npz(cwd, x, np.arange(20) % 3)


def _killed_in_a_write(cwd: Path) -> None:
    """A run killed with SIGKILL halfway through writing last.safetensors at the end of epoch 1
    (a real kill -9, at a moment chosen by the fault hook): epoch-1 is whole, last is a stray
    temp file."""
    result = run_cli(train("output.dir=runs/tiny", "train.epochs=2"), cwd=cwd,
                     faults={"kill9_in_write": {"match": ".last.safetensors.tmp-*", "after": 1000}})
    assert result.returncode == -9, result.explain()
    run = cwd / "runs" / "tiny"
    assert len(temp_files(run)) == 1 and not (run / "last.safetensors").exists(), sorted(tree(run))


def _check_resumed(result, cwd: Path) -> None:
    run = cwd / "runs" / "tiny"
    assert temp_files(run) == [], "the stray temp file is cleaned"
    checkpoints = check_run_folder(run)
    assert checkpoints["last.safetensors"].metadata["position"]["epoch"] == 2
    assert [r["epoch"] for r in checkpoints["last.safetensors"].metadata["history"]] == [1, 2]


def _check_keep_last(result, cwd: Path) -> None:
    names = sorted(p.name for p in (cwd / "run").iterdir())
    assert names == ["best.safetensors", "config.yaml", "epoch-2.safetensors", "epoch-3.safetensors",
                     "last.safetensors", "metrics.csv"], names


def _check_lr_accepted(result, cwd: Path) -> None:
    assert "  lr: 0.01" in result.stdout.splitlines(), result.stdout


def _check_class_names(names: list[str], skipped: int) -> Callable:
    def check(result, cwd: Path) -> None:
        meta = check_run_folder(cwd / "run")["last.safetensors"].metadata
        assert meta["class_names"] == names
        assert len(meta["data_info"]["skipped_files"]) == skipped
    return check


def _check_no_checkpoint(result, cwd: Path) -> None:
    assert sorted(p.name for p in (cwd / "run").iterdir()) == ["config.yaml"]


def _check_last_good_kept(result, cwd: Path) -> None:
    checkpoints = check_run_folder(cwd / "run")
    assert checkpoints["last.safetensors"].metadata["epoch"] == 1


CASES: dict[str, Case] = {
    # Interrupted runs
    "SIGTERM during a step, an evaluation or a checkpoint write":
        Case(train("output.dir=runs/tiny"), faults={"signal_at_step": [15, 3]}),
    "SIGINT (Ctrl-C), also twice during the checkpoint write":
        Case(train("output.dir=runs/tiny"), faults={"signal_at_step": [2, 3]}),
    "`kill -9` anywhere, then `--resume auto`":
        Case(train("output.dir=runs/tiny", "train.epochs=2") + ["--resume", "auto"], make=_killed_in_a_write,
             check=_check_resumed),
    "`--resume auto` with no valid checkpoint":
        Case(train("output.dir=runs/tiny", "train.epochs=1") + ["--resume", "auto"], stream="stdout"),
    # Disk and output folder
    "disk full while writing (earlier checkpoints stay byte-identical, temp removed)":
        Case(train("output.dir=runs/tiny"), faults={"enospc": {"match": ".epoch-2.safetensors.tmp-*", "after": 10}}),
    "folder made read-only during the run (permissions lost)":
        Case(train("output.dir=runs/tiny"),
             faults={"enospc": {"match": ".best.safetensors.tmp-*", "after": 0, "nth": 2, "errno": "EROFS"}}),
    "output.dir is a file":
        Case(train("output.dir=afile"), make=lambda cwd: (cwd / "afile").write_bytes(b"precious")),
    "output.dir under a file, or on a read-only folder/mount":
        Case(train("output.dir=afile/sub"), make=lambda cwd: (cwd / "afile").write_bytes(b"precious")),
    "keep_last: 2":
        Case(train("output.dir=run", "train.epochs=3", "output.keep_last=2"), check=_check_keep_last),
    # Configs
    "tab indentation": config_case("model:\n\tnum_classes: 3\n"),
    "unclosed bracket": config_case(tiny_with("classes: [0, 1, 2]", "classes: [0, 1, 2")),
    "empty file (or only comments)": config_case("# nothing here\n"),
    "top level is a list": config_case("- model\n- data\n"),
    "unknown key": config_case(tiny_with("  width: 4 ", "  colour: red\n  width: 4 ")),
    "misspelt key (two lines)": config_case(tiny_with("num_classes: 3 ", "num_clases: 3 ")),
    "duplicate key": config_case(tiny_with("  momentum: 0.9\n", "  momentum: 0.9\n  momentum: 0.8\n")),
    "`lr: 1e-2`": Case(["config", "show", "config.yaml"],
                       make=lambda cwd: (cwd / "config.yaml").write_text(tiny_with("lr: 0.05", "lr: 1e-2")),
                       stream="stdout", check=_check_lr_accepted),
    "`lr: abc` (or `--set optimizer.lr=abc`)": config_case(tiny_with("lr: 0.05", "lr: abc")),
    "`lr: -0.1` / `lr: 0`": config_case(tiny_with("lr: 0.05", "lr: -0.1")),
    "`lr: .inf` / `lr: .nan`": config_case(tiny_with("lr: 0.05", "lr: .inf")),
    "`momentum: 1.5`": config_case(tiny_with("momentum: 0.9", "momentum: 1.5")),
    "`num_classes: 0`": config_case(tiny_with("num_classes: 3 ", "num_classes: 0 ")),
    "`num_classes: 10.5`": config_case(tiny_with("num_classes: 3 ", "num_classes: 10.5 ")),
    "`num_classes: yes`": config_case(tiny_with("num_classes: 3 ", "num_classes: yes ")),
    "`freeze: off`": config_case(TINY_TEXT + "finetune:\n  freeze: off\n"),
    "`!!python/object/apply:os.system [...]`":
        config_case(tiny_with("seed: 0", 'seed: !!python/object/apply:os.system ["touch SENTINEL"]')),
    # Weights
    "truncated safetensors": weights_case("w.safetensors", lambda: _tiny_safetensors()[:len(_tiny_safetensors()) // 2]),
    "truncated .pth, not a zip": weights_case("w.pth", lambda: (WEIGHTS / "resnet18_w8.pth").read_bytes()[:5000]),
    "zero bytes (.safetensors)": weights_case("w.safetensors", lambda: b""),
    "zero bytes (.pth)": weights_case("w.pth", lambda: b""),
    "zip bomb entry": weights_case("w.pth", lambda: __import__("test_faults_weights")._zip_bomb()),
    "pickle calling posix.system / builtins.eval / subprocess.Popen (zip or legacy .pth)":
        Case(["convert", "evil_system.pth", "out.safetensors"], make=_copy(WEIGHTS / "evil_system.pth", "evil_system.pth")),
    "tensor view outside its storage":
        Case(["convert", "view_out_of_bounds.pth", "out.safetensors"],
             make=_copy(WEIGHTS / "view_out_of_bounds.pth", "view_out_of_bounds.pth")),
    "safetensors header length 2^63":
        weights_case("w.safetensors", lambda: struct.pack("<Q", 2**63) + _tiny_safetensors()[8:]),
    "offsets past the end": weights_case("w.safetensors", _edited("_past_end")),
    "overlapping offsets": weights_case("w.safetensors", _edited("_overlap")),
    "gap between tensors": weights_case("w.safetensors", _edited("_gap")),
    "shape x dtype != bytes": weights_case("w.safetensors", _edited("_bad_shape")),
    "unknown dtype": weights_case("w.safetensors", _edited("_bad_dtype")),
    "duplicate names": weights_case("w.safetensors", lambda: __import__("test_faults_weights")._duplicate(_tiny_safetensors())),
    "trailing bytes": weights_case("w.safetensors", lambda: _tiny_safetensors() + b"\0" * 8),
    "NaN / Inf values": Case(["convert", "w.safetensors", "out.safetensors"], make=lambda cwd: _nan_weights(cwd)),
    ".npz whose .npy header claims more than it holds": Case(["convert", "w.npz", "out.safetensors"],
                                                             make=lambda cwd: _lying_npz(cwd)),
    "wrong architecture (finetune)":
        Case(train("output.dir=run", "train.epochs=1", command="finetune") + ["--weights", "resnet18_w8.safetensors"],
             make=_copy(WEIGHTS / "resnet18_w8.safetensors", "resnet18_w8.safetensors")),
    # Data
    "imagefolder root empty, or only hidden folders": Case(imagefolder(), make=lambda cwd: (cwd / "images").mkdir()),
    "imagefolder root missing": Case(imagefolder("data.path=nothere")),
    "a class folder whose files are all 0-byte, text or truncated images":
        Case(imagefolder(), make=lambda cwd: _broken_class(cwd)),
    "some 0-byte, text or truncated `.png` among good ones": Case([a for a in imagefolder() if a != "-q"],
                                                                   make=_mixed_images, stream="stdout",
                                                                   check=_check_class_names(["cat", "dog"], 3)),
    "hidden folders and files (`.cache/`, `.thumbs/`)": Case(imagefolder(), make=_hidden,
                                                             check=_check_class_names(["cat", "dog"], 0)),
    "RGBA and 16-bit PNGs": Case(imagefolder(), make=_rgba_16bit, check=_check_class_names(["cat", "dog"], 0)),
    "IDX wrong magic": Case(train("data.source=idx", "data.path=magic", "output.dir=run"),
                            make=lambda cwd: _idx_pair(cwd / "magic", 30, 30, image_magic=2049)),
    "IDX image and label counts differ": Case(train("data.source=idx", "data.path=idx", "output.dir=run"),
                                              make=lambda cwd: _idx_pair(cwd / "idx", 30, 29)),
    "labels outside range (IDX or npz)":
        Case(train("data.source=npz", "data.path=data.npz", "data.classes=null", "output.dir=run"),
             make=lambda cwd: _npz(cwd, np.zeros((20, 8, 8), np.uint8), np.array([0, 1, 2] * 6 + [3, 0]))),
    "NaN pixels in an npz": Case(train("data.source=npz", "data.path=data.npz", "data.classes=null", "output.dir=run"),
                                 make=_nan_pixels),
    # Numerical failure
    "lr 1e6 (fresh run: no checkpoint is written)":
        Case(train("output.dir=run", "optimizer.lr=1e6"), check=_check_no_checkpoint),
    "divergence after good epochs (last good checkpoint stays byte-identical)":
        Case(train("output.dir=run", "train.epochs=3", "finetune.freeze_backbone=true", "finetune.unfreeze_at_epoch=1",
                   "finetune.backbone_lr_mult=2e7", command="finetune"), check=_check_last_good_kept),
}


def _nan_weights(cwd: Path) -> None:
    from test_faults_weights import safetensors_bytes, tiny_state

    state = tiny_state()
    state["fc.weight"] = state["fc.weight"].copy()
    state["fc.weight"][1, 2] = np.nan
    (cwd / "w.safetensors").write_bytes(safetensors_bytes(state))


def _lying_npz(cwd: Path) -> None:
    """An .npz whose fc.weight entry's .npy header claims 2**40 float32 values."""
    import io
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(16, np.float32))
    header["shape"] = (2**40,)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(cwd / "w.npz", "w") as zf:
        zf.writestr("fc.weight.npy", buffer.getvalue() + np.zeros(16, np.float32).tobytes())


def _broken_class(cwd: Path) -> None:
    _good_images(cwd / "images" / "cat", 8, 0)
    dog = cwd / "images" / "dog"
    dog.mkdir(parents=True)
    (dog / "empty.png").write_bytes(b"")
    (dog / "notes.png").write_text("text\n")
    (dog / "cut.png").write_bytes((cwd / "images" / "cat" / "img0.png").read_bytes()[:40])


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    jobs, cwds = {}, {}
    for i, (name, case) in enumerate(CASES.items()):
        cwd = base / f"case{i}"
        cwd.mkdir()
        case.make(cwd)
        cwds[name] = cwd
        jobs[name] = {"args": case.args, "cwd": cwd, "faults": case.faults}
    return run_forked(jobs), cwds


def test_every_row_has_a_reproduction_and_every_reproduction_a_row() -> None:
    rows = readme_rows()
    cases = [r.case for r in rows]
    assert len(rows) >= 50 and len(set(cases)) == len(cases)
    assert sorted(cases) == sorted(CASES), (sorted(set(cases) - set(CASES)), sorted(set(CASES) - set(cases)))


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: r.case)
def test_readme_row(row: Row, outcome) -> None:
    results, cwds = outcome
    case = CASES[row.case]
    result, cwd = results[row.case], cwds[row.case]
    if row.exit is not None:
        assert result.returncode == row.exit, result.explain()
    lines = [line.strip() for line in getattr(result, case.stream).splitlines()]
    found = []
    for message in row.messages:
        pattern = line_pattern(message)
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert hits, f"README: {message!r}\nnot a line of the command's {case.stream}:\n{result.explain()}"
        found.append(hits[0])
    assert found == sorted(found), "the lines come in another order than README's"
    if row.exit not in (None, 0):
        assert result.only_errors_on_stderr and len(result.errors) == len(row.messages), result.explain()
    if case.check is not None:
        case.check(result, cwd)
    assert row.messages or case.check is not None, f"row {row.case!r} states nothing that is checked"
