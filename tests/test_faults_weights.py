"""Hostile and broken weight files through the real CLI: ``autotrain convert FILE OUT`` for
every case and ``autotrain finetune --weights FILE`` for one of each family (plus a wrong
architecture, which only finetune can see).

Each: exit 3, one ``error:`` line naming the file (and the tensor where there is one), no
code run from a pickle (the sentinel file never appears), and nothing written: convert's OUT
does not appear (or, when it existed, keeps its bytes), finetune's run folder does not appear.
The unit tests (tests/test_io_*.py) cover the readers' messages in depth; this proves the
whole command refuses and leaves the disk alone.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import ROOT, TINY, run_forked, tree

from autotrain.io import safetensors_bytes
from autotrain.models import resnet18

WEIGHTS = ROOT / "tests" / "fixtures" / "weights"
SENTINEL = "PWNED_SENTINEL"  # what the evil fixtures' pickles would create in the working folder


def tiny_state() -> dict[str, np.ndarray]:
    """A state_dict with configs/tiny.yaml's architecture."""
    return resnet18(num_classes=3, in_channels=1, width=4, stem="small").state_dict()


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict | str, payload: bytes, length: int | None = None) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + payload


def edited(valid: bytes, edit) -> bytes:
    header, payload = split(valid)
    payload = edit(header, payload)
    return join(header, payload)


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _past_end(h: dict, p: bytes) -> bytes:
    last = h[by_offset(h)[-1]]  # one element longer than the payload holds
    last["shape"] = [int(np.prod(last["shape"])) + 1]
    last["data_offsets"][1] += 4 if last["dtype"] == "F32" else 8
    return p


def _overlap(h: dict, p: bytes) -> bytes:
    e = h["fc.weight"]
    e["data_offsets"] = [e["data_offsets"][0] - 4, e["data_offsets"][1] - 4]
    return p


def _gap(h: dict, p: bytes) -> bytes:
    names = by_offset(h)
    for name in names[names.index("fc.weight"):]:  # shift fc.weight and everything after by 4
        h[name]["data_offsets"] = [o + 4 for o in h[name]["data_offsets"]]
    e = h["fc.weight"]
    return p[: e["data_offsets"][0] - 4] + b"\0" * 4 + p[e["data_offsets"][0] - 4 :]


def _bad_shape(h: dict, p: bytes) -> bytes:
    h["fc.weight"]["shape"] = [3, 33]
    return p


def _bad_dtype(h: dict, p: bytes) -> bytes:
    h["fc.bias"]["dtype"] = "F8_E4M3"
    return p


def _duplicate(valid: bytes) -> bytes:
    header, payload = split(valid)
    text = json.dumps(header)
    spec = json.dumps(header["fc.bias"])
    return join(text[:-1] + f', "fc.bias": {spec}}}', payload)


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", b"\0" * (64 << 20))  # 64 MiB of zeros, deflated to ~64 KiB
    return buffer.getvalue()


OUT_OF_STORAGE = "tensor 'fc.weight' of size [100] (stride [1], offset 0) reads past its storage of 10 elements"


def build_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the fragment its error line must hold besides the file name)."""
    state = tiny_state()
    valid = safetensors_bytes(state)
    nan_state, inf_state = dict(state), dict(state)
    nan_state["fc.weight"] = state["fc.weight"].copy()
    nan_state["fc.weight"][1, 2] = np.nan
    inf_state["conv1.weight"] = state["conv1.weight"].copy()
    inf_state["conv1.weight"].flat[0] = -np.inf
    made = {
        "valid.safetensors": valid,
        "truncated.safetensors": valid[: len(valid) // 2],
        "truncated.pth": (WEIGHTS / "resnet18_w8.pth").read_bytes()[:5000],
        "zero.safetensors": b"",
        "zero.pth": b"",
        "not_a_zip.pth": b"PK\x03\x04 this is not a zip archive at all",
        "text.pth": b"hello, I am a text file\n",
        "zip_bomb.pth": _zip_bomb(),
        "header_2_63.safetensors": struct.pack("<Q", 2**63) + valid[8:],
        "past_end.safetensors": edited(valid, _past_end),
        "overlap.safetensors": edited(valid, _overlap),
        "gap.safetensors": edited(valid, _gap),
        "shape_bytes.safetensors": edited(valid, _bad_shape),
        "dtype.safetensors": edited(valid, _bad_dtype),
        "duplicate.safetensors": _duplicate(valid),
        "trailing.safetensors": valid + b"\0" * 8,
        "nan.safetensors": safetensors_bytes(nan_state),
        "inf.safetensors": safetensors_bytes(inf_state),
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    expect = {
        "truncated.safetensors": "past the end",
        "truncated.pth": ": not a readable zip file: BadZipFile: File is not a zip file",
        "zero.safetensors": "shorter than the 8-byte header length",
        "zero.pth": "not a recognised weights file",
        "not_a_zip.pth": "not a readable zip file",
        "text.pth": "not a recognised weights file",
        "zip_bomb.pth": "zip bomb",
        "header_2_63.safetensors": "header length 9223372036854775808 is absurd",
        "past_end.safetensors": "past the end",
        "overlap.safetensors": "tensor 'fc.weight': data_offsets",
        "gap.safetensors": "tensor 'fc.weight': data_offsets",
        "shape_bytes.safetensors": "tensor 'fc.weight': shape [3, 33] x F32 needs 396 bytes",
        "dtype.safetensors": "tensor 'fc.bias': unknown or unsupported dtype 'F8_E4M3'",
        "duplicate.safetensors": "duplicate name 'fc.bias'",
        "trailing.safetensors": "8 trailing bytes after the last tensor",
        "nan.safetensors": "tensor 'fc.weight' contains NaN",
        "inf.safetensors": "tensor 'conv1.weight' contains Inf",
    }
    cases = {name: (folder / name, fragment) for name, fragment in expect.items()}
    assert set(expect) | {"valid.safetensors"} == set(made)
    for name, fragment in [("evil_system.pth", "posix.system"), ("evil_eval.pth", "builtins.eval"),
                           ("evil_popen.pth", "subprocess.Popen"), ("evil_system_legacy.pth", "posix.system"),
                           ("evil_eval_legacy.pth", "builtins.eval"), ("evil_popen_legacy.pth", "subprocess.Popen"),
                           ("view_out_of_bounds.pth", OUT_OF_STORAGE), ("view_out_of_bounds_legacy.pth", OUT_OF_STORAGE)]:
        cases[name] = (WEIGHTS / name, fragment)
    return cases


CONVERT_CASES = [
    "truncated.safetensors", "truncated.pth", "zero.safetensors", "zero.pth", "not_a_zip.pth", "text.pth",
    "zip_bomb.pth", "header_2_63.safetensors", "past_end.safetensors", "overlap.safetensors", "gap.safetensors",
    "shape_bytes.safetensors", "dtype.safetensors", "duplicate.safetensors", "trailing.safetensors",
    "nan.safetensors", "inf.safetensors", "evil_system.pth", "evil_eval.pth", "evil_popen.pth",
    "evil_system_legacy.pth", "evil_eval_legacy.pth", "evil_popen_legacy.pth", "view_out_of_bounds.pth",
    "view_out_of_bounds_legacy.pth"]
FINETUNE_CASES = ["truncated.pth", "zip_bomb.pth", "evil_system.pth", "evil_popen_legacy.pth",
                  "view_out_of_bounds.pth", "header_2_63.safetensors", "overlap.safetensors", "nan.safetensors"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """Every command of this module, each a process of its own in its own empty working folder."""
    files = tmp_path_factory.mktemp("files")
    cases = build_cases(files)
    base = tmp_path_factory.mktemp("work")
    jobs, folders = {}, {}

    def job(key: str, args: list[str]) -> None:
        cwd = base / f"job{len(jobs)}"
        cwd.mkdir()
        if key.startswith("convert-existing"):
            (cwd / "out.safetensors").write_bytes(b"previous content")
        folders[key] = cwd
        jobs[key] = {"args": args, "cwd": cwd}

    for name, (path, _) in cases.items():
        job(f"convert {name}", ["convert", str(path), "out.safetensors"])
    job("convert-existing evil_eval.pth", ["convert", str(WEIGHTS / "evil_eval.pth"), "out.safetensors"])
    job("convert-existing nan.safetensors", ["convert", str(files / "nan.safetensors"), "out.safetensors"])
    job("convert valid", ["convert", str(files / "valid.safetensors"), "out.safetensors"])
    tune = ["finetune", str(TINY), "--set", "output.dir=run", "--set", "train.epochs=1", "-q", "--weights"]
    for name in FINETUNE_CASES:
        job(f"finetune {name}", [*tune, str(cases[name][0])])
    job("finetune wrong-architecture", [*tune, str(WEIGHTS / "resnet18_w8.safetensors")])
    job("finetune valid", [*tune, str(files / "valid.safetensors")])
    return cases, folders, run_forked(jobs)


def assert_refused(result, cwd: Path, path: Path, fragment: str, before: dict[str, bytes] | None = None) -> None:
    assert result.returncode == 3, result.explain()
    assert len(result.errors) == 1 and result.only_errors_on_stderr, result.explain()
    line = result.errors[0]
    assert str(path) in line and fragment in line, line
    assert tree(cwd) == (before or {}), "the command wrote something"
    assert not (cwd / SENTINEL).exists()


def test_the_valid_file_converts_and_finetunes(outcome) -> None:
    """Control: the file every broken case is made from is fine for both commands."""
    _, folders, results = outcome
    assert results["convert valid"].returncode == 0, results["convert valid"].explain()
    assert (folders["convert valid"] / "out.safetensors").stat().st_size > 0
    assert results["finetune valid"].returncode == 0, results["finetune valid"].explain()
    assert (folders["finetune valid"] / "run" / "last.safetensors").exists()


@pytest.mark.parametrize("name", CONVERT_CASES)
def test_convert_refuses(name: str, outcome) -> None:
    cases, folders, results = outcome
    path, fragment = cases[name]
    assert_refused(results[f"convert {name}"], folders[f"convert {name}"], path, fragment)


@pytest.mark.parametrize("name", ["evil_eval.pth", "nan.safetensors"])
def test_convert_refusal_keeps_an_existing_output(name: str, outcome) -> None:
    cases, folders, results = outcome
    path, fragment = cases[name]
    key = f"convert-existing {name}"
    assert_refused(results[key], folders[key], path, fragment, before={"out.safetensors": b"previous content"})


@pytest.mark.parametrize("name", FINETUNE_CASES)
def test_finetune_refuses_before_creating_the_run(name: str, outcome) -> None:
    cases, folders, results = outcome
    path, fragment = cases[name]
    assert_refused(results[f"finetune {name}"], folders[f"finetune {name}"], path, fragment)


def test_finetune_refuses_a_wrong_architecture(outcome) -> None:
    _, folders, results = outcome
    path = WEIGHTS / "resnet18_w8.safetensors"
    assert_refused(results["finetune wrong-architecture"], folders["finetune wrong-architecture"], path,
                   "shape mismatch")
    assert "conv1.weight: file (8, 3, 7, 7) vs model (4, 1, 3, 3)" in results["finetune wrong-architecture"].errors[0]
