"""The torch .pth reader: exact values without torch, and no code execution, ever."""

from __future__ import annotations

import importlib.util
import io
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from autotrain.errors import WeightsError
from autotrain.io import load_weights, read_pth

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "weights"


def _builders():
    spec = importlib.util.spec_from_file_location("make_weight_fixtures", FIXTURES / "make_weight_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


B = _builders()
SENTINEL = B.SENTINEL


def write(tmp_path: Path, data: bytes, name: str = "w.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def zip_with(items, storages, tmp_path: Path, top: str = "archive") -> Path:
    return write(tmp_path, B.build_pth_zip(B.program(B.ordered_dict(items)), storages, top))


def legacy_with(items, storages, tmp_path: Path) -> Path:
    return write(tmp_path, B.build_pth_legacy(B.program(B.ordered_dict(items)), storages), name="legacy.pth")


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", ["resnet18_w8.pth", "resnet18_w8_legacy.pth"])
def test_torch_files_load_bit_identical_to_expected(name: str) -> None:
    expected = np.load(WEIGHTS / "resnet18_w8_expected.npz")
    loaded = read_pth(WEIGHTS / name)
    assert list(loaded)[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]  # torch's order is kept
    assert set(loaded) == set(expected.files) - {"x", "logits"}
    assert "layer2.0.downsample.1.running_var" in loaded and loaded["bn1.num_batches_tracked"].shape == ()
    for key, array in loaded.items():
        assert array.dtype == expected[key].dtype and array.shape == expected[key].shape, key
        assert array.tobytes() == expected[key].tobytes(), key
        assert array.flags.owndata and array.flags.writeable, key


def test_load_weights_sniffs_both_layouts_by_content(tmp_path: Path) -> None:
    for name in ["resnet18_w8.pth", "resnet18_w8_legacy.pth"]:
        renamed = write(tmp_path, (WEIGHTS / name).read_bytes(), name="weights.bin")
        assert len(load_weights(renamed)) == 122


# ----------------------------------------------------------------------------- hostile pickles


@pytest.mark.parametrize(
    "name, global_name",
    [
        ("evil_system.pth", "posix.system"),
        ("evil_eval.pth", "builtins.eval"),
        ("evil_popen.pth", "subprocess.Popen"),
        ("evil_system_legacy.pth", "posix.system"),
        ("evil_eval_legacy.pth", "builtins.eval"),
        ("evil_popen_legacy.pth", "subprocess.Popen"),
    ],
)
def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path, monkeypatch, name: str, global_name: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError) as info:
        load_weights(WEIGHTS / name)
    message = str(info.value)
    assert global_name in message and name in message and "\n" not in message
    time.sleep(0.05)  # a spawned process would have had time to create it
    assert not (tmp_path / SENTINEL).exists()


@pytest.mark.parametrize("kind", ["system", "eval", "popen"])
def test_the_malicious_fixtures_are_really_malicious(tmp_path: Path, monkeypatch, kind: str) -> None:
    """Guard for the test above: the same pickle under plain pickle.loads does create the file."""
    monkeypatch.chdir(tmp_path)
    data_pkl = zipfile.ZipFile(WEIGHTS / f"evil_{kind}.pth").read("archive/data.pkl")

    class Plain(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

        def find_class(self, module, name):
            if module.startswith("torch"):
                return lambda *args: None
            return super().find_class(module, name)

    Plain(io.BytesIO(data_pkl)).load()
    deadline = time.monotonic() + 5
    while not (tmp_path / SENTINEL).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / SENTINEL).exists()


def _stack_global(module: str, name: str) -> bytes:
    return B.plain(module) + B.plain(name) + b"\x93"  # STACK_GLOBAL (protocol 4)


@pytest.mark.parametrize(
    "pkl",
    [
        # STACK_GLOBAL instead of GLOBAL
        b"\x80\x04" + _stack_global("os", "system") + B.plain(("touch " + SENTINEL,)) + b"R.",
        # INST opcode: module, name and the call in one
        b"(" + B.plain("touch " + SENTINEL) + b"ios\nsystem\n.",
        # protocol-0 name that the default unpickler would remap (__builtin__ -> builtins)
        B.program(B.call(B.glob("__builtin__", "eval"), B.plain(f"open({SENTINEL!r}, 'w')"))),
        # an allowed callable abused with a forbidden argument still stops at the forbidden global
        B.program(B.call(B.glob("collections", "OrderedDict"), B.glob("builtins", "exec"))),
        # a storage type that is not in the allow list
        B.program(B.ordered_dict([("w", B.tensor("ComplexFloatStorage", "0", 1, 0, (1,), (1,)))])),
    ],
)
def test_other_ways_of_reaching_a_global_are_refused(tmp_path: Path, monkeypatch, pkl: bytes) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="refusing to unpickle global"):
        read_pth(write(tmp_path, B.build_pth_zip(pkl, {"0": b"\0" * 8})))
    assert not (tmp_path / SENTINEL).exists()


def test_legacy_preamble_pickles_may_not_reference_any_global(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil_magic = B.program(B.evil_payload("system"))
    with pytest.raises(WeightsError, match="posix.system"):
        read_pth(write(tmp_path, evil_magic + pickle.dumps(1001, 2)))
    assert not (tmp_path / SENTINEL).exists()


# ----------------------------------------------------------------------------- views and storages


@pytest.mark.parametrize("name", ["view_out_of_bounds.pth", "view_out_of_bounds_legacy.pth"])
def test_out_of_bounds_view_fixture(name: str) -> None:
    with pytest.raises(WeightsError, match=r"tensor 'fc.weight' of size \[100\].*storage of 10 elements"):
        read_pth(WEIGHTS / name)


@pytest.mark.parametrize(
    "offset, size, stride, fragment",
    [
        (8, (3,), (1,), "reads past"),
        (0, (3, 4), (4, 1), "reads past"),
        (0, (5,), (-1,), "negative size or stride"),
        (0, (-5,), (1,), "negative size or stride"),
        (-1, (1,), (1,), "invalid storage offset"),
        (2**70, (1,), (1,), "reads past"),
        (0, (2, 2), (1,), "malformed size/stride"),
        (0, (1 << 40,), (0,), "expands 10 stored elements"),
    ],
)
def test_bad_views_are_refused(tmp_path: Path, offset, size, stride, fragment) -> None:
    item = ("layer1.0.conv1.weight", B.tensor("FloatStorage", "0", 10, offset, size, stride))
    with pytest.raises(WeightsError, match=fragment) as info:
        read_pth(zip_with([item], {"0": B.float_storage(np.arange(10))}, tmp_path))
    assert "layer1.0.conv1.weight" in str(info.value)


def test_views_offsets_and_shared_storages_are_honoured(tmp_path: Path) -> None:
    storage = B.float_storage(np.arange(12))

    def items(legacy: bool):
        views = {
            "matrix": (0, (3, 4), (4, 1)),
            "transposed": (0, (4, 3), (1, 4)),
            "tail": (10, (2,), (1,)),
            "broadcast": (5, (2, 3), (0, 1)),
            "empty": (12, (0, 3), (3, 1)),
            "scalar": (7, (), ()),
        }
        return [(k, B.tensor("FloatStorage", "0", 12, *v, legacy=legacy)) for k, v in views.items()]

    zipped = zip_with(items(False), {"0": storage}, tmp_path)
    legacy = legacy_with(items(True), [("0", 12, storage)], tmp_path)
    for path in (zipped, legacy):
        got = read_pth(path)
        full = np.arange(12, dtype=np.float32)
        np.testing.assert_array_equal(got["matrix"], full.reshape(3, 4))
        np.testing.assert_array_equal(got["transposed"], full.reshape(3, 4).T)
        np.testing.assert_array_equal(got["tail"], [10, 11])
        np.testing.assert_array_equal(got["broadcast"], [[5, 6, 7], [5, 6, 7]])
        assert got["empty"].shape == (0, 3) and got["scalar"].shape == () and got["scalar"] == 7
        got["broadcast"][0, 0] = -1  # every result owns its memory
        assert got["broadcast"][1, 0] == 5 and got["matrix"][1, 1] == 5


@pytest.mark.parametrize(
    "stype, raw, expected",
    [
        ("DoubleStorage", np.array([1.5, -2], "<f8").tobytes(), np.array([1.5, -2])),
        ("HalfStorage", np.array([1.5, -2], "<f2").tobytes(), np.array([1.5, -2], np.float16)),
        ("BFloat16Storage", np.array([0x3FC0, 0xC000], "<u2").tobytes(), np.array([1.5, -2], np.float32)),
        ("LongStorage", np.array([1, -2], "<i8").tobytes(), np.array([1, -2], np.int64)),
        ("IntStorage", np.array([1, -2], "<i4").tobytes(), np.array([1, -2], np.int32)),
        ("ShortStorage", np.array([1, -2], "<i2").tobytes(), np.array([1, -2], np.int16)),
        ("CharStorage", np.array([1, -2], "i1").tobytes(), np.array([1, -2], np.int8)),
        ("ByteStorage", bytes([1, 254]), np.array([1, 254], np.uint8)),
        ("BoolStorage", bytes([1, 0]), np.array([True, False])),
    ],
)
def test_every_storage_type(tmp_path: Path, stype: str, raw: bytes, expected: np.ndarray) -> None:
    got = read_pth(zip_with([("t", B.tensor(stype, "0", 2, 0, (2,), (1,)))], {"0": raw}, tmp_path))["t"]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("stype, raw, expected", [
    ("FloatStorage", np.array([1, 2, 3], ">f4").tobytes(), np.array([1, 2, 3], np.float32)),
    ("LongStorage", np.array([1, -2, 3], ">i8").tobytes(), np.array([1, -2, 3], np.int64)),
    # bfloat16 is the upper half of a float32: 1.0 = 0x3F80, -2.0 = 0xC000, 0.5 = 0x3F00.
    ("BFloat16Storage", np.array([0x3F80, 0xC000, 0x3F00], ">u2").tobytes(), np.array([1, -2, 0.5], np.float32)),
])
def test_big_endian_zip(tmp_path: Path, stype: str, raw: bytes, expected: np.ndarray) -> None:
    data = B.program(B.ordered_dict([("t", B.tensor(stype, "0", 3, 0, (3,), (1,)))]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("model/data.pkl", data)
        zf.writestr("model/byteorder", "big")
        zf.writestr("model/data/0", raw)
    got = read_pth(write(tmp_path, buffer.getvalue()))["t"]
    assert got.dtype == expected.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)


def test_storage_size_must_match_its_record(tmp_path: Path) -> None:
    item = [("t", B.tensor("FloatStorage", "0", 20, 0, (2,), (1,)))]
    with pytest.raises(WeightsError, match="storage '0' holds 40 bytes, expected 20 x 4"):
        read_pth(zip_with(item, {"0": B.float_storage(np.arange(10))}, tmp_path))
    with pytest.raises(WeightsError, match=r"zip entry 'archive/data/0' is missing"):
        read_pth(zip_with(item, {}, tmp_path))
    with pytest.raises(WeightsError, match="holds 10 elements, its record says 20"):
        read_pth(legacy_with([("t", B.tensor("FloatStorage", "0", 20, 0, (2,), (1,), True))], [("0", 10, b"\0" * 40)], tmp_path))


# ----------------------------------------------------------------------------- containers


def test_wrappers_and_dataparallel_prefix_are_removed(tmp_path: Path) -> None:
    storage = {"0": B.float_storage(np.arange(4))}
    inner = B.ordered_dict([("module.fc.bias", B.tensor("FloatStorage", "0", 4, 0, (4,), (1,)))])
    for wrapper in ("state_dict", "model"):
        pkl = B.program(b"}" + B.plain("epoch") + B.plain(3) + b"s" + B.plain(wrapper) + inner + b"s")
        got = read_pth(write(tmp_path, B.build_pth_zip(pkl, storage)))
        assert list(got) == ["fc.bias"]


def test_top_folder_name_varies(tmp_path: Path) -> None:
    item = [("fc.bias", B.tensor("FloatStorage", "0", 4, 0, (4,), (1,)))]
    got = read_pth(zip_with(item, {"0": B.float_storage(np.arange(4))}, tmp_path, top="resnet18_w8"))
    np.testing.assert_array_equal(got["fc.bias"], np.arange(4))


def rebuild(storage: bytes) -> bytes:
    """_rebuild_tensor_v2(storage, 0, (1,), (1,)) with an arbitrary storage argument."""
    return B.call(B.glob("torch._utils", "_rebuild_tensor_v2"), storage, B.plain(0), B.plain((1,)), B.plain((1,)))


@pytest.mark.parametrize(
    "body, fragment",
    [
        (B.plain([1, 2]), "holds a list, not a state_dict"),
        (B.ordered_dict([("epoch", B.plain(3))]), "tensor 'epoch' is a int, not a tensor"),
        (rebuild(B.plain(1)), "holds a _TensorRef"),
        (B.ordered_dict([("t", rebuild(B.plain([1])))]), "not backed by a storage"),
        (B.plain(("storage", 1)) + b"Q", "unexpected persistent id"),
        (B.call(B.glob("torch", "FloatStorage")), "corrupt data.pkl: TypeError"),
    ],
)
def test_malformed_pickles(tmp_path: Path, body: bytes, fragment: str) -> None:
    with pytest.raises(WeightsError, match=fragment):
        read_pth(write(tmp_path, B.build_pth_zip(B.program(body), {})))


def test_build_on_a_stand_in_is_refused(tmp_path: Path) -> None:
    tensor = B.tensor("FloatStorage", "0", 4, 0, (4,), (1,))
    body = B.ordered_dict([("t", tensor + b"}" + B.plain("offset") + B.plain(-5) + b"sb")])
    with pytest.raises(WeightsError, match="BUILD on _TensorRef is not allowed"):
        read_pth(write(tmp_path, B.build_pth_zip(B.program(body), {"0": b"\0" * 16})))


@pytest.mark.parametrize("target", [("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage")])
def test_build_on_an_allowed_global_cannot_alter_it(tmp_path: Path, target) -> None:
    # (None, {"__defaults__": (1, 2, 3)}) as BUILD state would rewrite a plain function's defaults
    body = B.glob(*target) + b"N}" + B.plain("__defaults__") + B.plain((1, 2, 3)) + b"s\x86b"
    with pytest.raises(WeightsError, match="corrupt data.pkl"):
        read_pth(write(tmp_path, B.build_pth_zip(B.program(body), {})))
    good = zip_with([("t", B.tensor("FloatStorage", "0", 2, 0, (2,), (1,)))], {"0": B.float_storage([1, 2])}, tmp_path)
    np.testing.assert_array_equal(read_pth(good)["t"], [1, 2])


def test_truncated_files(tmp_path: Path) -> None:
    for name in ["resnet18_w8.pth", "resnet18_w8_legacy.pth"]:
        data = (WEIGHTS / name).read_bytes()
        for cut in (10, len(data) // 2, len(data) - 3):
            with pytest.raises(WeightsError):
                read_pth(write(tmp_path, data[:cut]))


def test_not_a_zip_nor_a_pickle(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not a torch .pth file"):
        read_pth(write(tmp_path, b"hello, I am text"))
    with pytest.raises(WeightsError, match="not a recognised weights file"):
        load_weights(write(tmp_path, b"hello, I am text"))
    with pytest.raises(WeightsError, match="not a readable zip"):
        load_weights(write(tmp_path, b"PK\x03\x04 garbage that is not a zip"))
    with pytest.raises(WeightsError, match="neither a torch .pth nor an .npz"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("readme.txt", "hi")
        load_weights(write(tmp_path, buffer.getvalue()))


def _bomb(name: str, size: int = 8 << 20) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", B.program(B.ordered_dict([])))
        zf.writestr(name, b"\0" * size)
    return buffer.getvalue()


def test_zip_bomb_entries_are_refused_before_decompression(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="zip bomb"):
        load_weights(write(tmp_path, _bomb("archive/data/0")))
    with pytest.raises(WeightsError, match="zip bomb"):
        load_weights(write(tmp_path, _bomb("w.npy"), name="w.npz"))


def test_stored_entry_with_lying_size_is_refused(tmp_path: Path) -> None:
    data = bytearray(B.build_pth_zip(B.program(B.ordered_dict([])), {"0": b"\0" * 64}))
    # patch the central-directory uncompressed size of every entry to 1 GiB
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        data[pos + 24 : pos + 28] = (1 << 30).to_bytes(4, "little")
        pos = data.find(b"PK\x01\x02", pos + 4)
    with pytest.raises(WeightsError, match="sizes disagree"):
        read_pth(write(tmp_path, bytes(data)))


@pytest.mark.parametrize(
    "body, fragment",
    [
        # LONG_BINPUT 2**31: the C unpickler would allocate and zero a 16 GiB memo
        (B.plain(1) + b"r" + (2**31).to_bytes(4, "little"), "memo index 2147483648"),
        # BYTEARRAY8 claiming 2**60 bytes: allocated up front by the C unpickler
        (b"\x96" + (2**60).to_bytes(8, "little") + b"xx", "corrupt data.pkl"),
        (b"\xff", "corrupt data.pkl"),  # unknown opcode
    ],
)
def test_pickles_are_checked_before_the_unpickler_trusts_their_sizes(tmp_path: Path, body: bytes, fragment: str) -> None:
    with pytest.raises(WeightsError, match=fragment):
        read_pth(write(tmp_path, B.build_pth_zip(b"\x80\x05" + body + b".", {})))
    with pytest.raises(WeightsError, match="corrupt data.pkl"):
        read_pth(write(tmp_path, B.build_pth_zip(b"\x80\x02" + B.plain(1), {})))  # no STOP
