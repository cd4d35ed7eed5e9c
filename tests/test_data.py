"""Tests for autotrain.data: sources, splits, statistics, errors and the batch loader.

Every fixture is built in tmp_path (tiny IDX files, PNG trees, npz files); the only real
dataset used is the packaged digits.npz. Error tests check the exception type AND that the
one-line message names the file or folder at fault.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from autotrain.data import (
    AugmentSpec,
    BatchLoader,
    normalize_own,
    DatasetSplits,
    load_dataset,
    load_image,
    random_crop,
    split_indices,
)
from autotrain.data.arrays import bilinear_matrix, resize_stack
from autotrain.data.digits import load_digits_raw
from autotrain.errors import ConfigError, DatasetError


def assert_one_line_naming(error: pytest.ExceptionInfo, *names: object) -> str:
    """The message is one line and mentions every given file/folder name."""
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message, f"{name!s} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------
# builders


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, extra: bytes = b"",
              cut: int = 0) -> Path:
    """Write ``array`` (uint8) as an IDX file; .gz paths are gzipped.

    ``magic`` overrides the header's magic number, ``extra`` is appended after the data and
    ``cut`` bytes are removed from the end, to build broken files.
    """
    if magic is None:
        magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes() + extra
    if cut:
        payload = payload[:-cut]
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_idx_folder(folder: Path, n_train: int = 30, n_test: int = 10, size: int = 6,
                    gz: bool = False, dotted: bool = False, classes: int = 3) -> tuple[np.ndarray, ...]:
    """An IDX folder whose image i has every pixel equal to its label * 50 (easy to check)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    sep = "." if dotted else "-"
    arrays = []
    for split, count in (("train", n_train), ("t10k", n_test)):
        if count == 0:
            continue
        labels = (np.arange(count) % classes).astype(np.uint8)
        rng.shuffle(labels)
        images = np.repeat(labels[:, None, None] * 50, size * size, axis=1).reshape(count, size, size)
        write_idx(folder / f"{split}-images{sep}idx3-ubyte{suffix}", images.astype(np.uint8))
        write_idx(folder / f"{split}-labels{sep}idx1-ubyte{suffix}", labels)
        arrays += [images, labels]
    return tuple(arrays)


def save_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (5, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


RED, BLUE = (255, 0, 0), (0, 0, 255)


def make_imagefolder(root: Path) -> Path:
    """cat (red) and dog (blue) images, nested, plus hidden entries and three broken files."""
    save_png(root / "cat" / "a.png", RED)
    save_png(root / "cat" / "sub" / "deeper" / "b.PNG", RED, size=(9, 3))
    Image.new("RGB", (4, 4), RED).save(root / "cat" / "c.jpg", quality=95)
    save_png(root / "dog" / "d.png", BLUE)
    save_png(root / "dog" / "e.bmp", BLUE)
    save_png(root / ".hidden" / "x.png", (0, 255, 0))  # hidden class folder
    save_png(root / "dog" / ".thumb.png", (0, 255, 0))  # hidden file
    save_png(root / "dog" / ".cache" / "y.png", (0, 255, 0))  # hidden subfolder
    (root / "dog" / "notes.txt").write_text("not an image")  # ignored, other extension
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "text.png").write_text("this is not a png")
    good = (root / "dog" / "d.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_counts_and_values() -> None:
    splits = load_dataset("digits", None, image_size=8, in_channels=1, num_classes=10,
                          val_fraction=0.2, seed=0)
    assert isinstance(splits, DatasetSplits)
    assert splits.train_x.dtype == np.float32 and splits.val_x.dtype == np.float32
    assert splits.train_y.dtype == np.int64 and splits.val_y.dtype == np.int64
    assert splits.train_x.shape[1:] == (1, 8, 8)
    assert len(splits.train_y) + len(splits.val_y) == 5620
    assert len(splits.val_y) == round(5620 * 0.2)
    assert splits.class_names == [str(d) for d in range(10)]
    counts = np.bincount(np.concatenate([splits.train_y, splits.val_y]), minlength=10)
    assert counts.sum() == 5620 and np.all(counts > 0.09 * 5620) and np.all(counts < 0.11 * 5620)
    assert 0.0 <= splits.train_x.min() and splits.train_x.max() <= 1.0
    # At 8x8 there is no resize: values are exactly the 0..16 counts divided by 16.
    assert np.array_equal(np.unique(splits.train_x * 16), np.arange(17, dtype=np.float32))


def test_digits_packaged_file_matches_documented_class_counts() -> None:
    x, y = load_digits_raw()
    assert x.shape == (5620, 8, 8) and x.dtype == np.uint8 and x.max() == 16
    # optdigits.names: training + testing examples per class.
    expected = [376 + 178, 389 + 182, 380 + 177, 389 + 183, 387 + 181,
                376 + 182, 377 + 181, 387 + 179, 380 + 174, 382 + 180]
    assert np.bincount(y, minlength=10).tolist() == expected
    with pytest.raises(ValueError):
        x[0, 0, 0] = 1  # the cached arrays are shared, hence read-only


def test_digits_resize_and_three_channels() -> None:
    splits = load_dataset("digits", None, image_size=16, in_channels=3, num_classes=10,
                          val_fraction=0.0)
    assert splits.train_x.shape == (5620, 3, 16, 16)
    assert np.array_equal(splits.train_x[:, 0], splits.train_x[:, 2])
    assert len(splits.mean) == 3 and splits.mean[0] == pytest.approx(splits.mean[1])


def test_class_subset_relabels_in_given_order() -> None:
    raw_x, raw_y = load_digits_raw()
    splits = load_dataset("digits", None, 8, 1, num_classes=5, val_fraction=0.0,
                          classes=[5, 6, 7, 8, 9])
    assert splits.class_names == ["5", "6", "7", "8", "9"]
    assert set(np.unique(splits.train_y)) == {0, 1, 2, 3, 4}
    # With no split the file order is kept: relabelled class 0 is exactly the original 5s.
    assert np.array_equal(splits.train_x[splits.train_y == 0, 0] * 16, raw_x[raw_y == 5])

    reordered = load_dataset("digits", None, 8, 1, num_classes=2, val_fraction=0.0,
                             classes=["9", "5"])
    assert reordered.class_names == ["9", "5"]
    assert np.array_equal(reordered.train_x[reordered.train_y == 0, 0] * 16, raw_x[raw_y == 9])
    assert np.sum(reordered.train_y == 1) == np.sum(raw_y == 5)


def test_class_subset_errors() -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset("digits", None, 8, 1, num_classes=2, classes=[3, 12])
    assert_one_line_naming(error, "digits", "12")
    with pytest.raises(DatasetError) as error:
        load_dataset("digits", None, 8, 1, num_classes=10, classes=[5, 6, 7])
    assert_one_line_naming(error, "digits", "3", "10")
    with pytest.raises(ConfigError):
        load_dataset("digits", None, 8, 1, num_classes=2, classes=[5, 5])


def test_num_classes_mismatch_names_dataset_and_numbers() -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset("digits", None, 8, 1, num_classes=7)
    assert_one_line_naming(error, "digits", "10", "7")
    assert error.value.exit_code == 4


def test_bad_arguments_are_config_errors() -> None:
    for kwargs in ({"val_fraction": 1.0}, {"in_channels": 2}, {"image_size": 0}):
        arguments = {"source": "digits", "path": None, "image_size": 8, "in_channels": 1,
                     "num_classes": 10} | kwargs
        with pytest.raises(ConfigError):
            load_dataset(**arguments)
    with pytest.raises(ConfigError):
        load_dataset("csv", "x.csv", 8, 1, 10)
    with pytest.raises(ConfigError):
        load_dataset("idx", None, 8, 1, 10)


# ---------------------------------------------------------------------------------------------
# splitting and statistics


def indexed_npz(path: Path, count: int, classes: int = 4) -> Path:
    """npz whose image i encodes i in two pixels, so samples can be identified after a split."""
    x = np.zeros((count, 2, 2), dtype=np.uint8)
    x[:, 0, 0] = np.arange(count) % 256
    x[:, 0, 1] = np.arange(count) // 256
    return save_npz(path, x=x, y=np.arange(count) % classes)


def sample_ids(images: np.ndarray) -> np.ndarray:
    pixels = np.rint(images[:, 0] * 255).astype(np.int64)
    return pixels[:, 0, 0] + 256 * pixels[:, 0, 1]


def test_seeded_split_reproducible_and_disjoint(tmp_path: Path) -> None:
    path = indexed_npz(tmp_path / "ids.npz", 300)
    first = load_dataset("npz", str(path), 2, 1, 4, val_fraction=0.25, seed=7)
    again = load_dataset("npz", str(path), 2, 1, 4, val_fraction=0.25, seed=7)
    other = load_dataset("npz", str(path), 2, 1, 4, val_fraction=0.25, seed=8)
    train_ids, val_ids = sample_ids(first.train_x), sample_ids(first.val_x)
    assert len(val_ids) == 75 and len(train_ids) == 225
    assert not set(train_ids) & set(val_ids)
    assert sorted(np.concatenate([train_ids, val_ids])) == list(range(300))
    assert np.array_equal(train_ids, sample_ids(again.train_x))
    assert np.array_equal(first.val_y, again.val_y)
    assert not np.array_equal(val_ids, sample_ids(other.val_x))
    assert np.array_equal(first.train_y, train_ids % 4)  # labels travel with their images


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 400), fraction=st.floats(0.0, 0.99), seed=st.integers(0, 2**32 - 1))
def test_split_indices_partition(count: int, fraction: float, seed: int) -> None:
    train, val = split_indices(count, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(count))
    if fraction > 0 and count >= 2:
        assert 1 <= len(val) <= count - 1
    assert np.array_equal(val, split_indices(count, fraction, seed)[1])


def test_val_fraction_zero_gives_empty_val_with_shapes() -> None:
    splits = load_dataset("digits", None, 12, 3, 10, val_fraction=0.0)
    assert splits.val_x.shape == (0, 3, 12, 12) and splits.val_x.dtype == np.float32
    assert splits.val_y.shape == (0,) and splits.val_y.dtype == np.int64
    assert splits.info["num_val"] == 0


def test_statistics_come_from_train_split_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(200, 5, 5, 3), dtype=np.uint8)  # NHWC on disk
    x[:100, :, :, 0] = 255  # half the images are saturated in the red channel
    path = save_npz(tmp_path / "rgb.npz", x=x, y=rng.integers(0, 2, 200))
    splits = load_dataset("npz", str(path), 5, 3, 2, val_fraction=0.3, seed=3)
    train = splits.train_x.astype(np.float64)
    assert splits.mean == pytest.approx(train.mean(axis=(0, 2, 3)).tolist(), abs=1e-6)
    assert splits.std == pytest.approx(train.std(axis=(0, 2, 3)).tolist(), abs=1e-6)
    everything = np.concatenate([splits.train_x, splits.val_x]).astype(np.float64)
    assert abs(splits.mean[0] - everything[:, 0].mean()) > 1e-4


def test_resize_matches_pillow_bilinear() -> None:
    rng = np.random.default_rng(0)
    for height, width, size in [(8, 8, 32), (28, 28, 16), (10, 13, 7), (5, 5, 5)]:
        images = rng.random((3, height, width)).astype(np.float32)
        ours = resize_stack(images, size)
        pillow = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR))
                           for a in images])
        np.testing.assert_allclose(ours, pillow, atol=1e-5)
    assert np.allclose(bilinear_matrix(7, 19).sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------
# idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_idx_round_trip_uses_t10k_for_validation(tmp_path: Path, gz: bool, dotted: bool) -> None:
    train_images, train_labels, test_images, test_labels = make_idx_folder(
        tmp_path / "mnist", gz=gz, dotted=dotted)
    splits = load_dataset("idx", str(tmp_path / "mnist"), 6, 1, 3, val_fraction=0.2)
    assert splits.info["val_source"] == "t10k files"
    assert np.array_equal(splits.train_y, train_labels)
    assert np.array_equal(splits.val_y, test_labels)
    np.testing.assert_allclose(splits.train_x[:, 0], train_images / 255.0, atol=1e-6)
    np.testing.assert_allclose(splits.val_x[:, 0], test_images / 255.0, atol=1e-6)
    assert splits.class_names == ["0", "1", "2"]


def test_idx_without_t10k_splits_randomly_and_resizes(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "m", n_train=40, n_test=0)
    splits = load_dataset("idx", tmp_path / "m", 10, 3, 3, val_fraction=0.25, seed=1)
    assert splits.train_x.shape == (30, 3, 10, 10) and splits.val_x.shape == (10, 3, 10, 10)
    # Constant images stay constant through a resize: pixel value = label * 50 / 255.
    np.testing.assert_allclose(splits.train_x[:, :, 4, 4],
                               np.repeat(splits.train_y[:, None] * 50 / 255.0, 3, axis=1), atol=1e-5)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, n_test=0)
    bad = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((30, 6, 6), np.uint8), magic=2049)
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path), 6, 1, 3)
    assert_one_line_naming(error, bad, "2049", "2051")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, n_test=0)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, np.uint8))
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path), 6, 1, 3)
    assert_one_line_naming(error, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "30", "29")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file(tmp_path: Path, gz: bool) -> None:
    make_idx_folder(tmp_path, n_test=0, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    write_idx(tmp_path / name, np.zeros((30, 6, 6), np.uint8), cut=7)
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path), 6, 1, 3)
    assert_one_line_naming(error, tmp_path / name, "truncated")


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, n_test=0, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])  # cut inside the gzip trailer/stream
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path), 6, 1, 3)
    assert_one_line_naming(error, path)


def test_idx_header_dims_disagree_with_size(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, n_test=0)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((30, 6, 6), np.uint8),
                     extra=b"\x00" * 36)
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path), 6, 1, 3)
    assert_one_line_naming(error, path, "(30, 6, 6)")


def test_idx_missing_files_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path / "nowhere"), 6, 1, 3)
    assert_one_line_naming(error, tmp_path / "nowhere")
    make_idx_folder(tmp_path / "half", n_test=0)
    (tmp_path / "half" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path / "half"), 6, 1, 3)
    assert_one_line_naming(error, "train-labels-idx1-ubyte")


def test_idx_labels_out_of_range(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, n_test=0, classes=5)
    with pytest.raises(DatasetError) as error:
        load_dataset("idx", str(tmp_path), 6, 1, 3)
    assert_one_line_naming(error, tmp_path / "train-labels-idx1-ubyte", "4", "3")


# ---------------------------------------------------------------------------------------------
# imagefolder and single images


def test_imagefolder_classes_nesting_hidden_and_skipped(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "pets")
    splits = load_dataset("imagefolder", str(root), 4, 3, 2, val_fraction=0.0)
    assert splits.class_names == ["cat", "dog"]
    assert splits.train_x.shape == (5, 3, 4, 4)
    assert np.bincount(splits.train_y).tolist() == [3, 2]  # hidden entries are not counted
    # Labels follow their own files: every cat is red, every dog blue (no label shift).
    red, blue = splits.train_x[:, 0].mean(axis=(1, 2)), splits.train_x[:, 2].mean(axis=(1, 2))
    assert np.all((red > 0.9) == (splits.train_y == 0))
    assert np.all((blue > 0.9) == (splits.train_y == 1))
    info = splits.info
    assert len(info["skipped_files"]) == 3
    skipped = sorted(Path(entry["path"]).name for entry in info["skipped_files"])
    assert skipped == ["empty.png", "text.png", "truncated.png"]
    assert all(entry["reason"] for entry in info["skipped_files"])
    assert info["num_ignored_files"] == 1


def test_imagefolder_grey_conversion_and_class_subset(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "pets")
    splits = load_dataset("imagefolder", str(root), 6, 1, 1, val_fraction=0.0, classes=["dog"])
    assert splits.class_names == ["dog"] and splits.train_x.shape == (2, 1, 6, 6)
    # Pillow's L conversion of pure blue: 29 / 255 (ITU-R 601-2 luma).
    np.testing.assert_allclose(splits.train_x, 29 / 255.0, atol=1 / 255)


def test_imagefolder_empty_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset("imagefolder", str(tmp_path / "empty"), 4, 3, 2)
    assert_one_line_naming(error, tmp_path / "empty")


def test_imagefolder_class_without_images_is_named(tmp_path: Path) -> None:
    save_png(tmp_path / "root" / "cat" / "a.png", RED)
    (tmp_path / "root" / "dog").mkdir()
    (tmp_path / "root" / "dog" / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as error:
        load_dataset("imagefolder", str(tmp_path / "root"), 4, 3, 2)
    assert_one_line_naming(error, tmp_path / "root" / "dog")


def test_imagefolder_class_with_only_broken_images_is_named(tmp_path: Path) -> None:
    save_png(tmp_path / "root" / "cat" / "a.png", RED)
    (tmp_path / "root" / "dog").mkdir()
    (tmp_path / "root" / "dog" / "zero.png").write_bytes(b"")
    with pytest.raises(DatasetError) as error:
        load_dataset("imagefolder", str(tmp_path / "root"), 4, 3, 2)
    assert_one_line_naming(error, tmp_path / "root" / "dog")


def test_imagefolder_class_count_mismatch(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "pets")
    with pytest.raises(DatasetError) as error:
        load_dataset("imagefolder", str(root), 4, 3, 5)
    assert_one_line_naming(error, root, "2", "5")


def test_load_image_rgba_and_sixteen_bit(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 0  # fully transparent: alpha is dropped, the colour kept (torchvision)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = load_image(tmp_path / "rgba.png", 4, 3)
    assert pixels.shape == (3, 4, 4) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[1], 200 / 255.0, atol=1e-6)
    assert load_image(tmp_path / "rgba.png", 2, 1).shape == (1, 2, 2)

    deep = np.full((4, 4), 32768, dtype=np.uint16)
    deep[0, 0] = 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    grey = load_image(tmp_path / "deep.png", 4, 1)
    assert grey[0, 0, 0] == pytest.approx(1.0)
    assert grey[0, 2, 2] == pytest.approx(0.5, abs=1e-4)  # scaled, not clipped to 255
    assert load_image(tmp_path / "deep.png", 4, 3).shape == (3, 4, 4)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(DatasetError) as error:
        load_image(tmp_path / "fake.png", 4, 3)
    assert_one_line_naming(error, tmp_path / "fake.png")
    with pytest.raises(DatasetError) as error:
        load_image(tmp_path / "missing.png", 4, 3)
    assert_one_line_naming(error, tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------
# npz


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(20, 7, 7), dtype=np.uint8)
    x = {"NHW": grey, "NHWC": grey[..., None].repeat(3, -1), "NCHW": grey[:, None].repeat(3, 1)}[layout]
    path = save_npz(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    splits = load_dataset("npz", str(path), 7, 1, 2, val_fraction=0.0)
    assert splits.train_x.shape == (20, 1, 7, 7)
    np.testing.assert_allclose(splits.train_x[:, 0], grey / 255.0, atol=1e-5)


def test_npz_class_names_and_float_pixels(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 4 * 9, dtype=np.float32).reshape(4, 3, 3)
    path = save_npz(tmp_path / "f.npz", x=x, y=np.array([0, 1, 2, 1]),
                    class_names=np.array(["ant", "bee", "cow"]))
    splits = load_dataset("npz", str(path), 3, 1, 2, val_fraction=0.0, classes=["cow", "bee"])
    assert splits.class_names == ["cow", "bee"]
    assert splits.train_y.tolist() == [1, 0, 1]
    np.testing.assert_allclose(splits.train_x[:, 0], x[1:], atol=1e-6)


def test_npz_nan_pixels_name_the_file(tmp_path: Path) -> None:
    x = np.zeros((4, 3, 3), dtype=np.float32)
    x[2, 1, 1] = np.nan
    path = save_npz(tmp_path / "nan.npz", x=x, y=np.arange(4) % 2)
    with pytest.raises(DatasetError) as error:
        load_dataset("npz", str(path), 3, 1, 2)
    assert_one_line_naming(error, path, "NaN")


def test_npz_labels_out_of_range(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "lab.npz", x=np.zeros((4, 3, 3), np.uint8), y=np.array([0, 1, 7, 1]))
    with pytest.raises(DatasetError) as error:
        load_dataset("npz", str(path), 3, 1, 2)
    assert_one_line_naming(error, path, "7", "2")
    negative = save_npz(tmp_path / "neg.npz", x=np.zeros((4, 3, 3), np.uint8), y=np.array([0, -1, 1, 1]))
    with pytest.raises(DatasetError) as error:
        load_dataset("npz", str(negative), 3, 1, 2)
    assert_one_line_naming(error, negative, "-1")


def test_npz_structural_errors(tmp_path: Path) -> None:
    cases = {
        "noy.npz": {"x": np.zeros((4, 3, 3), np.uint8)},
        "len.npz": {"x": np.zeros((4, 3, 3), np.uint8), "y": np.zeros(3, np.int64)},
        "shape.npz": {"x": np.zeros((4, 5, 5, 5), np.uint8), "y": np.zeros(4, np.int64)},
        "range.npz": {"x": np.full((4, 3, 3), 255.0, np.float32), "y": np.zeros(4, np.int64)},
    }
    for name, arrays in cases.items():
        path = save_npz(tmp_path / name, **arrays)
        with pytest.raises(DatasetError) as error:
            load_dataset("npz", str(path), 3, 1, 1)
        assert_one_line_naming(error, path)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DatasetError) as error:
        load_dataset("npz", str(tmp_path / "junk.npz"), 3, 1, 1)
    assert_one_line_naming(error, tmp_path / "junk.npz")


def test_npz_class_count_mismatch(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "three.npz", x=np.zeros((6, 3, 3), np.uint8), y=np.arange(6) % 3)
    with pytest.raises(DatasetError) as error:
        load_dataset("npz", str(path), 3, 1, 4)
    assert_one_line_naming(error, path, "3", "4")


# ---------------------------------------------------------------------------------------------
# BatchLoader


def identity_data(count: int = 23, channels: int = 2, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """x[i] is filled with i, y[i] = i: batches reveal which samples they hold."""
    x = np.broadcast_to(np.arange(count, dtype=np.float32)[:, None, None, None],
                        (count, channels, size, size)).copy()
    return x, np.arange(count)


def collect(loader: BatchLoader, epoch: int, start_batch: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(loader.epoch(epoch, start_batch=start_batch))


def test_loader_every_sample_once_and_lengths() -> None:
    x, y = identity_data(23)
    loader = BatchLoader(x, y, 5, [0.0, 0.0], [1.0, 1.0], shuffle=True, seed=3)
    batches = collect(loader, 0)
    assert len(loader) == 5 == len(batches)
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int64 for b in batches)
    dropping = BatchLoader(x, y, 5, [0.0, 0.0], [1.0, 1.0], seed=3, drop_last=True)
    assert len(dropping) == 4 and [len(b[1]) for b in collect(dropping, 0)] == [5, 5, 5, 5]
    ordered = BatchLoader(x, y, 5, [0.0, 0.0], [1.0, 1.0], shuffle=False)
    assert np.concatenate([b[1] for b in collect(ordered, 4)]).tolist() == list(range(23))
    assert len(BatchLoader(x[:0], y[:0], 5, [0.0, 0.0], [1.0, 1.0])) == 0


def test_loader_order_depends_only_on_seed_and_epoch() -> None:
    x, y = identity_data(50)
    first = BatchLoader(x, y, 8, [0.0, 0.0], [1.0, 1.0], seed=11)
    second = BatchLoader(x, y, 8, [0.0, 0.0], [1.0, 1.0], seed=11)
    collect(second, 0), collect(second, 1)  # history must not matter
    order = lambda batches: np.concatenate([b[1] for b in batches])  # noqa: E731
    assert np.array_equal(order(collect(first, 2)), order(collect(second, 2)))
    assert not np.array_equal(order(collect(first, 2)), order(collect(first, 3)))
    other_seed = BatchLoader(x, y, 8, [0.0, 0.0], [1.0, 1.0], seed=12)
    assert not np.array_equal(order(collect(first, 2)), order(collect(other_seed, 2)))


def test_loader_resume_mid_epoch_matches_uninterrupted_run() -> None:
    x, y = identity_data(40, size=6)
    loader = BatchLoader(x, y, 6, [0.5, 0.5], [2.0, 2.0], seed=5,
                         augment=AugmentSpec(crop_padding=2, hflip=True))
    full = collect(loader, 3)
    resumed = collect(loader, 3, start_batch=4)
    assert len(resumed) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], resumed):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_loader_normalises_per_channel() -> None:
    x, y = identity_data(10, channels=3)
    mean, std = [1.0, 2.0, 3.0], [2.0, 4.0, 0.5]
    loader = BatchLoader(x, y, 4, mean, std, shuffle=True, seed=0)
    before = x.copy()
    for images, labels in loader.epoch(0):
        expected = (x[labels] - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
        np.testing.assert_allclose(images, expected, rtol=1e-6)
    assert x[3, 0, 0, 0] == 3.0  # the dataset itself is left untouched
    np.testing.assert_array_equal(x, before)  # float32 batches are normalised in place: on copies


def test_normalize_own_is_what_the_loader_yields_bit_for_bit() -> None:
    """predict normalises with normalize_own; training and evaluation batches must be the
    very same float32 values, or a model sees other inputs at prediction time."""
    x, y = identity_data(6, channels=3)
    x = x + np.float32(0.3)
    mean, std = [0.1, 0.2, 0.3], [0.3, 0.7, 1.1]
    (batch, _), = BatchLoader(x, y, 6, mean, std, shuffle=False).epoch(0)
    np.testing.assert_array_equal(normalize_own(x.copy(), mean, std), batch)
    as_uint8 = normalize_own(np.full((1, 3, 2, 2), 7, dtype=np.uint8), mean, std)
    assert as_uint8.dtype == np.float32
    np.testing.assert_allclose(as_uint8[0, :, 0, 0], (7 - np.array(mean)) / np.array(std), rtol=1e-6)


def test_random_crop_shifts_content_with_zero_padding() -> None:
    images = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4) + 1
    out = random_crop(images, 2, offset_y=np.array([2, 0]), offset_x=np.array([2, 4]))
    assert np.array_equal(out[0], images[0])  # offset == padding: unshifted
    # offset (0, 4): shifted down by 2 and left by 2; the uncovered band is zero padding.
    assert np.array_equal(out[1, 0, 2:, :2], images[1, 0, :2, 2:])
    assert np.all(out[1, 0, :2] == 0) and np.all(out[1, 0, :, 2:] == 0)


def test_loader_augmentation_shapes_and_content() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((64, 3, 8, 8)).astype(np.float32) + 1.0  # strictly positive: padding shows as 0
    y = np.arange(64)
    loader = BatchLoader(x, y, 32, [0.0] * 3, [1.0] * 3, seed=2,
                         augment=AugmentSpec(crop_padding=3, hflip=True))
    pad = 3
    flipped_any = shifted_y_any = shifted_x_any = False
    for images, labels in loader.epoch(0):
        assert images.shape == (len(labels), 3, 8, 8) and images.dtype == np.float32
        for image, label in zip(images, labels):
            padded = np.pad(x[label], ((0, 0), (pad, pad), (pad, pad)))
            matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                       for flip in (False, True)
                       if np.array_equal(image, (padded[:, :, ::-1] if flip else padded)
                                         [:, dy:dy + 8, dx:dx + 8])]
            assert matches, "augmented image is not a shifted (maybe mirrored) window"
            flipped_any |= any(m[2] for m in matches)
            shifted_y_any |= any(m[0] != pad for m in matches)
            shifted_x_any |= any(m[1] != pad for m in matches)
    assert flipped_any and shifted_y_any and shifted_x_any
    plain = BatchLoader(x, y, 32, [0.0] * 3, [1.0] * 3, seed=2, augment=AugmentSpec())
    images, labels = next(iter(plain.epoch(0)))
    assert np.array_equal(images, x[labels])


def test_augment_spec_validation() -> None:
    with pytest.raises(ValueError):
        AugmentSpec(crop_padding=-1)
    assert not AugmentSpec().active and AugmentSpec(hflip=True).active


def test_npz_whose_header_claims_more_than_it_holds_is_refused_before_allocating(tmp_path):
    """np.load reserves shape x itemsize before reading a member; a 2**40-element claim in a
    tiny file must be a DatasetError naming the file, not a 4 TiB allocation."""
    import io
    import tracemalloc
    import zipfile

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 8, 8), np.float32))
    raw = buf.getvalue()
    claim = b"(1099511627776, 8, 8)"
    raw = raw.replace(b"(4, 8, 8)", claim).replace(b" " * (len(claim) - len(b"(4, 8, 8)")) + b"\n", b"\n", 1)
    path = tmp_path / "hostile.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", raw)
        labels = io.BytesIO()
        np.save(labels, np.zeros(4, np.int64))
        zf.writestr("y.npy", labels.getvalue())
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as err:
            load_dataset("npz", path, 8, 1, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "hostile.npz" in str(err.value) and "claims" in str(err.value)
    assert peak < 50 * 2**20
