"""The uint8 data cache (issue 11): decode once, memory-map, stream; shards of a global batch.

Every imagefolder here is a few dozen tiny PNGs made in tmp_path; the cache goes to
tmp_path too (an explicit path, or AUTOTRAIN_CACHE_DIR for "auto"), never to ~/.cache.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotrain.config import config_from_dict, diff_configs
from autotrain.data import AugmentSpec, BatchLoader, ImageRows, load_dataset, load_image
from autotrain.data import cache as image_cache
from autotrain.data.images import decode_listing, decode_u8, list_folder
from autotrain.errors import DatasetError
from autotrain.io.checkpoint import load_checkpoint
from autotrain.train.run import train
from fault_helpers import kill9, run_cli, temp_files

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, per_class: int = 12, classes: int = 3, seed: int = 0, size=(10, 12)) -> Path:
    """``classes`` class folders of random RGB PNGs (odd sizes: every image is resized)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def load(root: Path, cache, size: int = 8, channels: int = 3, notify=None, **kwargs):
    return load_dataset("imagefolder", str(root), size, channels, 3, val_fraction=0.25, seed=1,
                        cache=cache, notify=notify, **kwargs)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = make_folder(tmp_path / "images")
    (root / "class1" / "broken.png").write_bytes(b"not a png")
    return root


# --------------------------------------------------------------------------- pixels and statistics


def test_stored_pixels_are_pillows_resized_bytes_and_read_back_as_load_image(folder: Path) -> None:
    path = folder / "class0" / "003.png"
    expected = np.asarray(Image.open(path).convert("RGB").resize((8, 8), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(decode_u8(path, 8, 3), expected)
    # What training reads (v / 255 in float32) is what predict decodes, bit for bit.
    assert np.array_equal(image_cache.to_unit_float(decode_u8(path, 8, 3)[None])[0], load_image(path, 8, 3))


def test_sixteen_bit_images_are_scaled_then_rounded(tmp_path: Path) -> None:
    deep = np.full((4, 4), 32768, dtype=np.uint16)
    deep[0, 0] = 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    stored = decode_u8(tmp_path / "deep.png", 4, 1)
    assert stored.dtype == np.uint8 and stored[0, 0, 0] == 255 and stored[0, 2, 2] == 128  # 0.500008 * 255


def test_splits_are_views_with_exact_train_statistics(folder: Path, tmp_path: Path) -> None:
    splits = load(folder, tmp_path / "c.atcache")
    assert isinstance(splits.train_x, ImageRows) and splits.train_x.memory_mapped
    assert splits.train_x.shape == (27, 3, 8, 8) and splits.val_x.shape == (9, 3, 8, 8)
    # Exact statistics of v / 255 (not of its float32 rounding, which is 3e-8 off).
    exact = splits.train_x.take(np.arange(27)).astype(np.float64) / 255.0
    np.testing.assert_allclose(splits.mean, exact.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(splits.std, exact.std(axis=(0, 2, 3)), rtol=1e-12)
    floats = np.asarray(splits.train_x, dtype=np.float64)
    # Array-like reads agree with the loader's uint8 rows.
    assert np.array_equal(splits.train_x[3:5, 1], floats[3:5, 1].astype(np.float32))
    assert np.array_equal(splits.train_x[np.array([4, 0, 2])],
                          image_cache.to_unit_float(splits.train_x.take(np.array([4, 0, 2]))))
    assert len(splits.info["skipped_files"]) == 1 and splits.info["skipped_files"][0]["path"].endswith("broken.png")


def test_take_returns_rows_in_the_order_asked() -> None:
    pixels = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1) * 10
    rows = ImageRows(pixels, np.zeros((6, 1), np.int64), np.zeros((6, 1), np.int64)).subset(np.array([5, 1, 3, 0]))
    assert rows.take(np.array([2, 0, 3, 1]))[:, 0, 0, 0].tolist() == [30, 50, 0, 10]


# --------------------------------------------------------------------------- found again by content


def test_second_load_reads_the_file_and_a_changed_folder_decodes_again(folder: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.setenv(image_cache.CACHE_DIR_ENV, str(tmp_path / "cachedir"))
    first = load(folder, "auto")
    assert first.info["cache"]["status"] == "built"
    path = Path(first.info["cache"]["path"])
    assert path.parent == tmp_path / "cachedir" and path.suffix == ".atcache"
    stamp = path.stat().st_mtime_ns
    second = load(folder, "auto")
    assert second.info["cache"]["status"] == "read" and path.stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(first.train_x), np.asarray(second.train_x))
    assert first.mean == second.mean and first.std == second.std
    assert second.info["skipped_files"] == first.info["skipped_files"]

    victim = folder / "class2" / "000.png"  # same name, new content and mtime
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(stamp + 10**9, stamp + 10**9))
    third = load(folder, "auto")
    assert third.info["cache"]["status"] == "built" and third.info["cache"]["path"] != str(path)
    everything = [np.concatenate([np.asarray(s.train_x), np.asarray(s.val_x)]) for s in (first, third)]
    assert not np.array_equal(*everything)
    # Another image_size is another cache too.
    assert load(folder, "auto", size=6).info["cache"]["path"] not in (str(path), third.info["cache"]["path"])


def test_cache_off_and_cache_file_hold_the_same_rows(folder: Path, tmp_path: Path) -> None:
    off = load(folder, "off")
    steps: list[tuple[int, int]] = []
    cached = load(folder, str(tmp_path / "c.atcache"), progress=lambda done, total: steps.append((done, total)))
    assert steps[-1] == (37, 37) and all(a[0] < b[0] for a, b in zip(steps, steps[1:]))  # 36 good + 1 broken
    assert off.info["cache"]["status"] == "memory" and not off.train_x.memory_mapped
    assert np.array_equal(off.train_x.take(np.arange(27)), cached.train_x.take(np.arange(27)))
    assert off.mean == cached.mean and off.std == cached.std


def test_the_cache_file_is_the_same_whatever_the_pool_size(folder: Path, tmp_path: Path) -> None:
    listing = list_folder(folder, ["class0", "class1", "class2"])
    files = []
    for workers in (1, 2):
        key = f"{workers}"
        with open(tmp_path / key, "wb") as handle:
            sink = image_cache._FileSink(handle, 3, 8)
            skipped = decode_listing(listing, 8, 3, sink, workers=workers)
            sink.finish({"fingerprint": "same", "extra": {"skipped": skipped}})
        files.append((tmp_path / key).read_bytes())
    assert files[0] == files[1]


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("damage", ["truncated", "header", "index", "empty"])
def test_a_damaged_cache_is_rebuilt_with_one_warning(folder: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c.atcache"
    expected = np.asarray(load(folder, str(path)).train_x)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: size // 2]
    elif damage == "header":
        data[-100] ^= 0x01  # a byte of the JSON header
    elif damage == "index":
        data[64 + 36 * 3 * 8 * 8 + 3] ^= 0x01  # a label byte (the index follows the 36 images)
    else:
        data = bytearray()
    # A new file in its place: cutting short a file that is still mapped would raise SIGBUS.
    path.unlink()
    path.write_bytes(bytes(data))
    said: list[str] = []
    again = load(folder, str(path), notify=said.append)
    assert again.info["cache"]["status"] == "rebuilt"
    assert len(said) == 1 and str(path) in said[0] and "rebuilding" in said[0] and "\n" not in said[0]
    assert path.stat().st_size == size and np.array_equal(np.asarray(again.train_x), expected)


def test_an_explicit_path_that_cannot_be_rewritten_is_a_dataset_error(folder: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    with pytest.raises(DatasetError) as error:
        load(folder, str(tmp_path / "afile" / "c.atcache"))
    assert error.value.exit_code == 4 and str(tmp_path / "afile" / "c.atcache") in str(error.value)

    path = tmp_path / "c.atcache"
    load(folder, str(path))
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:-10])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(image_cache, "_write", read_only)
    with pytest.raises(DatasetError) as error:
        load(folder, str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: data cache is unusable (") and "Read-only file system" in message
    assert "\n" not in message
    # The automatic location falls back to memory with a warning instead.
    monkeypatch.setenv(image_cache.CACHE_DIR_ENV, str(tmp_path / "auto"))
    said: list[str] = []
    fallback = load(folder, "auto", notify=said.append)
    assert fallback.info["cache"]["status"] == "memory" and len(said) == 1 and "Read-only" in said[0]


def test_a_killed_builders_temp_file_is_removed_and_never_read(folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.atcache"
    stale = tmp_path / ".c.atcache.tmp-999999"
    stale.write_bytes(b"half a cache")
    splits = load(folder, str(path))
    assert splits.info["cache"]["status"] == "built" and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


_BUILDER = """
import sys
from autotrain.data import images, load_dataset
images._POOL_MIN = 0  # the process pool even for this small folder
load_dataset("imagefolder", sys.argv[1], 8, 3, 3, val_fraction=0.25, seed=1, cache=sys.argv[2])
"""


def test_kill_9_during_a_pool_build_leaves_no_cache_and_the_next_run_builds_it(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "many", per_class=200, classes=3, size=(6, 6))
    target = tmp_path / "disk" / "c.atcache"
    target.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _BUILDER, str(folder), str(target)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 64 for p in temp_files(target.parent)):  # rows are being written
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it was seen"
        time.sleep(0.002)
    kill9(proc)  # returns once the pipes close: no pool worker outlived the builder
    assert not target.exists() and len(temp_files(target.parent)) == 1
    args = ["train", str(ROOT / "configs" / "imagefolder.yaml"), "--set", f"data.path={folder}",
            "--set", "model.num_classes=3", "--set", "model.width=2", "--set", "data.image_size=8",
            "--set", "train.epochs=1", "--set", "schedule.warmup_epochs=0", "--set", f"data.cache={target}",
            "--set", "output.dir=run"]
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.explain()
    assert f"data cache {target} (built, " in again.stdout and temp_files(target.parent) == []


_WAITER = """
import sys
from autotrain.data import load_dataset
said = []
splits = load_dataset("imagefolder", sys.argv[1], 8, 3, 3, val_fraction=0.25, seed=1, cache=sys.argv[2],
                      notify=lambda text: (said.append(text), print("NOTE", text, flush=True)))
print("STATUS", splits.info["cache"]["status"], float(splits.mean[0]), flush=True)
"""


def test_a_second_process_waits_for_the_builder_and_reads_its_file(folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "shared.atcache"
    lock = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # this test is "the builder"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    waiter = subprocess.Popen([sys.executable, "-c", _WAITER, str(folder), str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = waiter.stdout.readline()
        assert first.startswith("NOTE") and "another process is building it; waiting" in first, first
        built = load(folder, str(tmp_path / "elsewhere.atcache"))  # same data: the same file content
        os.replace(tmp_path / "elsewhere.atcache", path)
        time.sleep(0.2)
        assert waiter.poll() is None  # still waiting on the lock, it has read nothing
    finally:
        os.close(lock)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert out.split() == ["STATUS", "read", repr(float(built.mean[0]))], out


def test_cli_names_the_cache_and_exits_4_when_an_explicit_cache_cannot_be_written(folder: Path,
                                                                                 tmp_path: Path) -> None:
    args = ["train", str(ROOT / "configs" / "imagefolder.yaml"), "--set", f"data.path={folder}",
            "--set", "model.num_classes=3", "--set", "model.width=2", "--set", "data.image_size=8",
            "--set", "train.epochs=1", "--set", "schedule.warmup_epochs=0", "--set", "train.batch_size=16",
            "--set", "output.dir=run"]
    env = {image_cache.CACHE_DIR_ENV: str(tmp_path / "auto")}
    ok = run_cli(args, tmp_path, env=env)
    assert ok.returncode == 0, ok.explain()
    made = list((tmp_path / "auto").glob("*.atcache"))
    assert len(made) == 1 and f"data cache {made[0]} (built, " in ok.stdout, ok.explain()
    # ENOSPC halfway through writing an explicit cache: exit 4 naming it, no file left behind.
    target = tmp_path / "disk" / "c.atcache"
    target.parent.mkdir()
    full = run_cli([*args, "--set", f"data.cache={target}", "--overwrite"], tmp_path, env=env,
                   faults={"enospc": {"match": "*.atcache.tmp-*", "after": 300}})
    assert full.returncode == 4 and full.errors == [f"error: {target}: data cache cannot be written: "
                                                    "No space left on device"], full.explain()
    assert sorted(p.name for p in target.parent.iterdir()) == ["c.atcache.lock"]


# --------------------------------------------------------------------------- runs and the loader


def _tiny_config(folder: Path, out: Path, cache: str) -> object:
    return config_from_dict({
        "model": {"num_classes": 3, "in_channels": 3, "width": 2},
        "data": {"source": "imagefolder", "path": str(folder), "image_size": 8, "cache": cache,
                 "augment": {"crop_padding": 2, "hflip": True}},
        "train": {"epochs": 2, "batch_size": 8},
        "output": {"dir": str(out)},
    })


def test_reading_the_cache_and_decoding_afresh_give_bit_identical_weights(folder: Path, tmp_path: Path) -> None:
    states = {}
    for name, cache in (("off", "off"), ("built", str(tmp_path / "c.atcache")), ("read", str(tmp_path / "c.atcache"))):
        train(_tiny_config(folder, tmp_path / name, cache))
        checkpoint = load_checkpoint(tmp_path / name / "last.safetensors")
        assert checkpoint.metadata["data_info"]["cache"]["status"] == ("memory" if name == "off" else name)
        states[name] = checkpoint.model_state
    for name in ("built", "read"):
        assert all(np.array_equal(states["off"][k], states[name][k]) for k in states["off"]), name
    # A run's cache setting is where images live, not what they are: resume may change it.
    assert diff_configs(_tiny_config(folder, tmp_path, "off"), _tiny_config(folder, tmp_path, "auto"),
                        ("data",)) == []


@pytest.mark.parametrize("source", ["rows", "floats"])
def test_shards_of_a_global_batch_are_slices_of_the_single_process_batch(source: str) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (23, 3, 6, 6), dtype=np.uint8)
    sums = image_cache.per_image_sums(pixels)
    x = ImageRows(pixels, *sums) if source == "rows" else image_cache.to_unit_float(pixels)
    y = rng.integers(0, 4, 23)
    loader = BatchLoader(x, y, 7, [0.5] * 3, [0.25] * 3, seed=5, augment=AugmentSpec(crop_padding=2, hflip=True))
    whole = list(loader.epoch(2))
    assert len(whole) == 4
    for b, (bx, by) in enumerate(whole):
        assert np.array_equal(by, y[loader.batch_indices(2, b)])
        for cuts in ((0, 4, 7), (0, 1, 2, 7), (0, 7)):  # uneven shards, a shard of one, one rank
            parts = [loader.batch(2, b, part=slice(lo, hi)) for lo, hi in zip(cuts, cuts[1:])]
            assert np.array_equal(np.concatenate([p[0] for p in parts])[: len(by)], bx)
            assert np.array_equal(np.concatenate([p[1] for p in parts])[: len(by)], by)
    # Resume at batch 2, and the prefetching loader, see exactly the same batches.
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(whole[2:], loader.epoch(2, start_batch=2)))
    loader.prefetch = True
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(whole, loader.epoch(2)))
    with pytest.raises(IndexError):
        loader.batch_indices(2, 4)


def test_uint8_rows_give_the_same_batches_as_their_float_values() -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (10, 1, 5, 5), dtype=np.uint8)
    y = rng.integers(0, 2, 10)
    spec = AugmentSpec(crop_padding=1, hflip=True)
    rows = BatchLoader(ImageRows(pixels, *image_cache.per_image_sums(pixels)), y, 4, [0.4], [0.3], seed=1, augment=spec)
    floats = BatchLoader(image_cache.to_unit_float(pixels), y, 4, [0.4], [0.3], seed=1, augment=spec)
    for (a, ya), (b, yb) in zip(rows.epoch(1), floats.epoch(1)):
        assert a.dtype == np.float32 and np.array_equal(a, b) and np.array_equal(ya, yb)


def test_config_reads_unquoted_off_as_the_off_setting() -> None:
    cfg = config_from_dict({"model": {"num_classes": 2}, "data": {"cache": False}})
    assert cfg.data.cache == "off"
    assert config_from_dict({"model": {"num_classes": 2}}).data.cache == "auto"


def test_the_cli_decode_bar_starts_and_ends_with_the_decoding() -> None:
    from autotrain.cli.render import RichReporter

    reporter = RichReporter()
    reporter.on_data_progress(32, 64)
    assert reporter.progress is not None and reporter.progress.tasks[0].completed == 32
    reporter.on_data_progress(64, 64)
    assert reporter.progress is None  # stopped: the epoch bar can start
    quiet = RichReporter(quiet=True)
    quiet.on_data_progress(1, 2)
    assert quiet.progress is None
