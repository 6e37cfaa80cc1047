"""Tests for kdlib.data: loaders on tiny files in the real on-disk formats, batching and augmentation.

No test touches the network (an autouse fixture makes any attempt fail) or the user's real cache.
"""

from __future__ import annotations

import gzip
import io
import pickle
import random
import socket
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import kdlib.data as D
import kdlib.data.files
from kdlib.data import (
    Batch,
    DatasetFormatError,
    RandomCropFlip,
    Split,
    batches,
    random_crop_flip,
)

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection or a URL fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted in a test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def isolated_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No $KDLIB_DATA, an empty user cache and an empty Debian folder, all under tmp_path."""
    monkeypatch.delenv("KDLIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kdlib.data.files, "DEBIAN_DATASETS", tmp_path / "debian")


# ---------------------------------------------------------------------------------- writers of real formats


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """An IDX file of unsigned bytes: magic 0x00000801 + ndim, big-endian sizes, then the raw bytes."""
    magic = 0x0800 + array.ndim  # 2049 for labels (1-D), 2051 for images (3-D)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def write_idx_set(folder: Path, *, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0) -> dict:
    """The four (Fashion-)MNIST IDX files with random content; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in IDX_STEMS.items():
        write_idx(folder / stem, arrays[key], gz=gz)
    return arrays


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes every str and bytes the way Python 2 wrote its ``str`` (the real CIFAR files are Python 2
    pickles): as (SHORT_)BINSTRING, which Python 3 reads back as ``bytes`` under ``encoding="bytes"``."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_pickle(path: Path, obj: object, protocol: int | str | None = None) -> None:
    """Pickle ``obj``; ``protocol="python2"`` imitates a file written by Python 2 (protocol 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        if protocol == "python2":
            buffer = io.BytesIO()
            Python2Pickler(buffer, protocol=2).dump(obj)
            # Files written with NumPy 1 name the module numpy.core (GLOBAL is newline-terminated text).
            f.write(buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
        else:
            pickle.dump(obj, f, protocol=protocol)


def cifar_batch(rng: np.random.Generator, n: int, num_classes: int, labels_key: bytes) -> dict:
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        labels_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(folder: Path, *, n: int = 3, protocol: int | str | None = "python2") -> dict:
    """cifar-10-batches-py: five training batches of n images, a test batch and batches.meta."""
    rng = np.random.default_rng(1)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = cifar_batch(rng, n, 10, b"labels")
        write_pickle(folder / name, out[name], protocol)
    names = [f"class{i}".encode() for i in range(10)]
    write_pickle(
        folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072}, protocol
    )
    return out


def write_cifar100(folder: Path, *, n_train: int = 8, n_test: int = 4) -> dict:
    """cifar-100-python: train, test (fine and coarse labels) and meta."""
    rng = np.random.default_rng(2)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        out[name] = cifar_batch(rng, n, 100, b"fine_labels")
        out[name][b"coarse_labels"] = [v // 5 for v in out[name][b"fine_labels"]]
        write_pickle(folder / name, out[name], "python2")
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    write_pickle(folder / "meta", meta, "python2")
    return out


def normalized(u8: np.ndarray, name: str) -> torch.Tensor:
    """What the loaders should produce: pixels / 255, minus the fixed mean, over the fixed std (per channel)."""
    mean, std = (torch.tensor(v).reshape(-1, 1, 1) for v in D.NORMALIZATION[name])
    return (torch.from_numpy(u8.astype(np.float32)) / 255 - mean) / std


# --------------------------------------------------------------------------------------------- IDX parsing


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "imgs", images, gz=gz)
    out = D.read_idx(path, magic=2051)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and out.flags.writeable
    np.testing.assert_array_equal(out, images)


def test_read_idx_wrong_magic_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.arange(5, dtype=np.uint8), gz=False)
    with pytest.raises(DatasetFormatError, match=r"labels.*magic number 2049, expected 2051"):
        D.read_idx(path, magic=2051)


# ------------------------------------------------------------------------------------ MNIST, Fashion-MNIST


def test_fashion_mnist_reads_flat_gz_folder(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path / "fm", n_train=12, n_test=6)
    ds = D.fashion_mnist(root=tmp_path / "fm", device="cpu")
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.test.x.shape == (6, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.device == torch.device("cpu") and ds.augment is None
    assert (ds.mean, ds.std) == ((0.2860,), (0.3530,))
    torch.testing.assert_close(ds.train.x, normalized(arrays["train_images"][:, None], "fashion_mnist"))
    torch.testing.assert_close(ds.test.x, normalized(arrays["test_images"][:, None], "fashion_mnist"))
    assert ds.train.y.tolist() == arrays["train_labels"].tolist()
    assert ds.test.y.tolist() == arrays["test_labels"].tolist()


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", ["", "MNIST/raw"], ids=["flat", "torchvision"])
def test_mnist_layouts_and_compression(tmp_path: Path, gz: bool, layout: str) -> None:
    arrays = write_idx_set(tmp_path / "data" / layout, gz=gz)
    ds = D.mnist(root=tmp_path / "data", device="cpu")
    assert ds.classes == tuple("0123456789")
    torch.testing.assert_close(ds.train.x, normalized(arrays["train_images"][:, None], "mnist"))
    assert D.NORMALIZATION["mnist"] == ((0.1307,), (0.3081,))
    assert ds.test.y.tolist() == arrays["test_labels"].tolist()


def test_fashion_mnist_torchvision_layout_with_both_gz_and_raw(tmp_path: Path) -> None:
    # torchvision's download leaves both the .gz and the extracted file in FashionMNIST/raw.
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_set(raw, gz=True, seed=1)
    arrays = write_idx_set(raw, gz=False, seed=1)
    ds = D.fashion_mnist(root=tmp_path, device="cpu")
    assert ds.train.y.tolist() == arrays["train_labels"].tolist()


def test_search_order_root_then_env_then_cache_then_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Four copies that differ in their number of training samples, so the loaded one identifies its place.
    write_idx_set(tmp_path / "root", n_train=5)
    write_idx_set(tmp_path / "env" / "fashion-mnist", n_train=6)
    write_idx_set(tmp_path / "cache" / "kdlib" / "fashion-mnist" / "FashionMNIST" / "raw", n_train=7)
    write_idx_set(tmp_path / "debian" / "fashion-mnist", n_train=8)
    monkeypatch.setenv("KDLIB_DATA", str(tmp_path / "env"))

    def n_train(**kwargs: object) -> int:
        return len(D.fashion_mnist(device="cpu", **kwargs).train)

    assert n_train(root=tmp_path / "root") == 5
    assert n_train() == 6
    monkeypatch.delenv("KDLIB_DATA")
    assert n_train() == 7
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    assert n_train() == 8


def test_kdlib_data_folder_itself_holds_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "env", n_train=9)
    monkeypatch.setenv("KDLIB_DATA", str(tmp_path / "env"))
    assert len(D.mnist(device="cpu").train) == 9


def test_cache_defaults_to_home_dot_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "kdlib"
    write_idx_set(tmp_path / "home" / ".cache" / "kdlib" / "mnist", n_train=4)
    assert len(D.mnist(device="cpu").train) == 4


def test_missing_fashion_mnist_message_lists_places_and_remedies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "partial"
    write_idx(partial / IDX_STEMS["train_images"], np.zeros((2, 28, 28), np.uint8), gz=True)
    monkeypatch.setenv("KDLIB_DATA", str(partial))
    with pytest.raises(FileNotFoundError) as info:
        D.fashion_mnist(device="cpu")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg and "KDLIB_DATA" in msg
    for place in (
        partial,
        partial / "FashionMNIST" / "raw",
        tmp_path / "cache" / "kdlib" / "fashion-mnist",
        tmp_path / "debian" / "fashion-mnist",
    ):
        assert str(place) in msg
    assert "lacks train-labels-idx1-ubyte" in msg  # the incomplete folder says what it lacks
    assert msg.index(str(partial)) < msg.index(str(tmp_path / "cache")) < msg.index(str(tmp_path / "debian"))


def write_any(name: str, folder: Path) -> None:
    """A complete small copy of the named dataset in ``folder``."""
    if name in ("fashion_mnist", "mnist"):
        write_idx_set(folder)
    elif name == "cifar10":
        write_cifar10(folder / "cifar-10-batches-py")
    else:
        write_cifar100(folder / "cifar-100-python")


FILE_DATASETS = ["fashion_mnist", "mnist", "cifar10", "cifar100"]
DEFAULT_DIRS = {"fashion_mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar-10", "cifar100": "cifar-100"}


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_root_that_does_not_exist_is_an_error_not_a_fallback(tmp_path: Path, name: str) -> None:
    write_any(name, tmp_path / "cache" / "kdlib" / DEFAULT_DIRS[name])  # a copy the default search would find
    assert len(D.load(name, device="cpu").train) > 0
    typo = tmp_path / "typo"
    with pytest.raises(FileNotFoundError) as info:
        D.load(name, root=str(typo), device="cpu")
    msg = str(info.value)
    assert f"root='{typo}' does not exist" in msg
    assert "existing folder" in msg and "omit root=" in msg and "download=True" in msg
    assert not typo.exists()  # nothing was created


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_root_without_a_complete_copy_names_what_is_missing(tmp_path: Path, name: str) -> None:
    write_any(name, tmp_path / "cache" / "kdlib" / DEFAULT_DIRS[name])
    root = tmp_path / "mine"
    write_any(name, root)
    victim = root / {
        "fashion_mnist": "t10k-labels-idx1-ubyte.gz",
        "mnist": "t10k-labels-idx1-ubyte.gz",
        "cifar10": "cifar-10-batches-py/test_batch",
        "cifar100": "cifar-100-python/test",
    }[name]
    victim.unlink()
    with pytest.raises(FileNotFoundError) as info:
        D.load(name, root=root, device="cpu")
    msg = str(info.value)
    assert f"not found in root='{root}'" in msg and "omit root=" in msg and "download=True" in msg
    assert f"lacks {victim.name.removesuffix('.gz')}" in msg
    assert str(tmp_path / "cache") in msg  # the default places are named, but not searched


def test_root_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        D.mnist(root=tmp_path / "file", device="cpu")


@pytest.mark.parametrize("exists", [True, False], ids=["empty_root", "new_root"])
def test_download_goes_into_the_given_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool) -> None:
    import torchvision.datasets

    calls = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append(Path(root))
            write_idx_set(Path(root) / "MNIST" / "raw", n_train=11)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    write_idx_set(tmp_path / "cache" / "kdlib" / "mnist", n_train=4)  # ignored: root was given
    root = tmp_path / "dl"
    if exists:
        root.mkdir()
    assert len(D.mnist(root=root, device="cpu", download=True).train) == 11
    assert calls == [root]


def test_missing_mnist_message_has_no_debian_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        D.mnist(device="cpu")
    assert "apt-get" not in str(info.value) and "mnist(download=True)" in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "bad_gzip", "wrong_magic"])
def test_corrupt_idx_file_names_the_file(tmp_path: Path, damage: str) -> None:
    write_idx_set(tmp_path, gz=True)
    labels = tmp_path / (IDX_STEMS["test_labels"] + ".gz")
    if damage == "truncated":
        raw = gzip.decompress(labels.read_bytes())
        labels.write_bytes(gzip.compress(raw[:-2]))
        pattern = "truncated or corrupt"
    elif damage == "bad_gzip":
        labels.write_bytes(labels.read_bytes()[:20])
        pattern = "not a valid gzip file"
    else:
        write_idx(tmp_path / IDX_STEMS["test_labels"], np.zeros((2, 28, 28), np.uint8), gz=True)
        pattern = "magic number 2051, expected 2049"
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        D.fashion_mnist(root=tmp_path, device="cpu")
    assert str(labels) in str(info.value)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    write_idx(tmp_path / IDX_STEMS["train_labels"], np.zeros(3, np.uint8), gz=True)
    with pytest.raises(DatasetFormatError, match=r"12 images but .* has 3 labels"):
        D.mnist(root=tmp_path, device="cpu")


def test_download_uses_torchvision_into_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((Path(root), download))
            write_idx_set(Path(root) / "FashionMNIST" / "raw", n_train=10)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = D.fashion_mnist(device="cpu", download=True)
    assert calls == [(tmp_path / "cache" / "kdlib" / "fashion-mnist", True)]
    assert len(ds.train) == 10
    D.fashion_mnist(device="cpu", download=True)  # found in the cache now: no second download
    assert len(calls) == 1


def test_failed_download_says_what_was_attempted(tmp_path: Path) -> None:
    # With the network blocked, torchvision's real download fails; the error says where it tried to go.
    with pytest.raises(RuntimeError, match="downloading MNIST with torchvision into"):
        D.mnist(root=tmp_path / "dl", device="cpu", download=True)


def test_subsets_are_seeded_and_validated(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=20, n_test=10)
    a = D.mnist(root=tmp_path, device="cpu", train_size=7, test_size=3, seed=1)
    b = D.mnist(root=tmp_path, device="cpu", train_size=7, test_size=3, seed=1)
    c = D.mnist(root=tmp_path, device="cpu", train_size=7, test_size=3, seed=2)
    assert (len(a.train), len(a.test)) == (7, 3)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    for bad, err in ((0, ValueError), (-1, ValueError), (21, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="train_size"):
            D.mnist(root=tmp_path, device="cpu", train_size=bad)


def test_wrong_types_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="root"):
        D.mnist(root=3, device="cpu")  # type: ignore[arg-type]
    write_idx_set(tmp_path)
    with pytest.raises(TypeError, match="seed"):
        D.mnist(root=tmp_path, device="cpu", seed="1")  # type: ignore[arg-type]


def test_augment_flag_sets_crop_and_flip_per_dataset(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    assert D.mnist(root=tmp_path, device="cpu").augment is None
    fm = D.fashion_mnist(root=tmp_path, device="cpu", augment=True).augment
    mn = D.mnist(root=tmp_path, device="cpu", augment=True).augment
    assert isinstance(fm, RandomCropFlip) and (fm.padding, fm.flip) == (2, True)
    assert isinstance(mn, RandomCropFlip) and (mn.padding, mn.flip) == (2, False)
    assert fm.fill == pytest.approx((-0.2860 / 0.3530,))  # padded pixels are black after normalization


# --------------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("protocol", ["python2", 2, None], ids=["python2", "protocol2", "default"])
def test_cifar10_reads_python_batches(tmp_path: Path, protocol: int | str | None) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py", n=3, protocol=protocol)
    ds = D.cifar10(root=tmp_path, device="cpu")
    assert ds.train.x.shape == (15, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.classes == tuple(f"class{i}" for i in range(10)) and ds.num_classes == 10
    order = [f"data_batch_{i}" for i in range(1, 6)]
    assert ds.train.y.tolist() == [v for name in order for v in written[name][b"labels"]]
    u8 = np.concatenate([written[name][b"data"] for name in order]).reshape(-1, 3, 32, 32)
    torch.testing.assert_close(ds.train.x, normalized(u8, "cifar10"))
    assert D.NORMALIZATION["cifar10"][0] == (0.4914, 0.4822, 0.4465)


def test_cifar10_files_directly_in_kdlib_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path / "env" / "cifar-10", n=2)
    monkeypatch.setenv("KDLIB_DATA", str(tmp_path / "env"))
    assert len(D.load("cifar10", device="cpu").train) == 10


def test_cifar100_reads_fine_labels_and_names(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path / "cifar-100-python", n_train=8, n_test=4)
    ds = D.cifar100(root=tmp_path, device="cpu", augment=True)
    assert ds.train.x.shape == (8, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    assert ds.num_classes == 100 and ds.classes[:2] == ("fine0", "fine1")
    assert ds.train.y.tolist() == written["train"][b"fine_labels"]
    u8 = written["test"][b"data"].reshape(-1, 3, 32, 32)
    torch.testing.assert_close(ds.test.x, normalized(u8, "cifar100"))
    assert isinstance(ds.augment, RandomCropFlip) and (ds.augment.padding, ds.augment.flip) == (4, True)


def test_corrupt_cifar_pickle_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    bad = folder / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        D.cifar10(root=tmp_path, device="cpu")


def test_cifar_pickle_may_not_run_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("this must not run",))

    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    write_pickle(folder / "meta", {b"fine_label_names": Evil()})
    with pytest.raises(DatasetFormatError, match=r"refusing to load builtins\.print"):
        D.cifar100(root=tmp_path, device="cpu")


def test_missing_cifar_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        D.cifar100(root=tmp_path, device="cpu")
    msg = str(info.value)
    assert "CIFAR-100 not found" in msg and "download=True" in msg and "apt-get" not in msg
    assert str(tmp_path / "cifar-100-python") in msg


# ------------------------------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_default_shapes_and_determinism() -> None:
    a = D.mnist1d(device="cpu")
    b = D.mnist1d(device="cpu")
    assert a.train.x.shape == (4000, 40) and a.test.x.shape == (1000, 40) and a.input_shape == (40,)
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    assert set(a.train.y.tolist()) == set(range(10)) and a.classes == tuple("0123456789")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    a.train.x.zero_()  # each call gets its own tensors: changing one leaves the memoized data alone
    assert not torch.equal(a.train.x, D.mnist1d(device="cpu").train.x)


def test_mnist1d_matches_the_generator_and_restores_global_rng() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()
    ds = D.mnist1d(device="cpu", num_samples=200, seed=7, iid_noise_scale=0.05)
    assert random.getstate() == py_state
    np.testing.assert_array_equal(np.random.get_state()[1], np_state[1])
    assert np.random.get_state()[2:] == np_state[2:]

    args = get_dataset_args()
    args.num_samples, args.seed, args.iid_noise_scale = 200, 7, 0.05
    ref = make_dataset(args)
    assert ds.train.x.shape == (160, 40) and ds.test.x.shape == (40, 40)
    np.testing.assert_allclose(ds.train.x.numpy(), ref["x"].astype(np.float32))
    assert ds.test.y.tolist() == ref["y_test"].tolist()
    assert not torch.equal(ds.train.x, D.mnist1d(device="cpu", num_samples=200, seed=8).train.x)


def test_mnist1d_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown MNIST-1D argument.*'bogus'.*valid:.*iid_noise_scale"):
        D.mnist1d(bogus=1)
    with pytest.raises(ValueError, match="max_shift must be an int >= 0"):
        D.mnist1d(augment=-2)
    with pytest.raises(ValueError, match="train_split"):
        D.mnist1d(train_split=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        D.mnist1d(num_samples=0)
    with pytest.raises(ValueError, match=r"unknown MNIST-1D argument.*'url'"):
        D.mnist1d(url="https://example.org/x.pkl")


# --------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_normalization_and_stratification() -> None:
    ds = D.digits(device="cpu")
    assert ds.train.x.shape == (1347, 1, 8, 8) and ds.test.x.shape == (450, 1, 8, 8)
    assert ds.train.x.dtype == torch.float32 and ds.num_classes == 10
    pixels = ds.train.x * 0.3760 + 0.3053  # undo the fixed normalization: back to pixels / 16
    assert pixels.min().item() == pytest.approx(0.0, abs=1e-5) and pixels.max().item() == pytest.approx(1.0)
    all_y = torch.cat([ds.train.y, ds.test.y])
    expected = torch.bincount(all_y, minlength=10).double() * 0.25
    assert (torch.bincount(ds.test.y, minlength=10).double() - expected).abs().max() <= 1.0
    again, other = D.digits(device="cpu"), D.digits(device="cpu", seed=1)
    assert torch.equal(ds.test.x, again.test.x) and not torch.equal(ds.test.y, other.test.y)


def test_digits_options_and_errors() -> None:
    small = D.digits(device="cpu", test_fraction=0.5, train_size=100, test_size=50)
    assert (len(small.train), len(small.test)) == (100, 50)
    with pytest.raises(ValueError, match="augmentation is not defined for digits"):
        D.digits(augment=True)
    with pytest.raises(ValueError, match="test_fraction"):
        D.digits(test_fraction=0)


# -------------------------------------------------------------------------------------------------- batches


def tiny_split(n: int = 10) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 3)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 10, 32])
def test_batches_cover_every_index_once(shuffle: bool, batch_size: int) -> None:
    split = tiny_split(10)
    out = list(batches(split, batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0)))
    assert all(isinstance(b, Batch) for b in out)
    index = torch.cat([b.index for b in out])
    assert sorted(index.tolist()) == list(range(10))
    for b in out:  # each batch's inputs and labels are those of its indices
        assert torch.equal(b.x, split.x[b.index]) and torch.equal(b.y, split.y[b.index])
    assert [len(b.index) for b in out][:-1] == [batch_size] * (len(out) - 1)


def test_shuffle_is_reproducible_and_depends_on_seed() -> None:
    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b.index for b in batches(tiny_split(50), 8, shuffle=True, generator=gen)]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != list(range(50))


def test_drop_last() -> None:
    assert [len(b.index) for b in batches(tiny_split(10), 4, drop_last=True)] == [4, 4]
    assert [len(b.index) for b in batches(tiny_split(10), 4)] == [4, 4, 2]
    # A split smaller than one batch still gives one batch, so an epoch is never empty.
    assert [len(b.index) for b in batches(tiny_split(3), 4, drop_last=True)] == [3]


def test_batches_argument_errors() -> None:
    for bad, err in ((0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="batch_size"):
            batches(tiny_split(), bad)  # type: ignore[arg-type]  # fails at the call, before iterating
    with pytest.raises(TypeError, match="Split"):
        batches((torch.zeros(3, 1), torch.zeros(3)), 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        batches(tiny_split(), 2, generator=0)  # type: ignore[arg-type]


def test_split_validation() -> None:
    with pytest.raises(ValueError, match="must match"):
        Split(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"y must be \(N,\)"):
        Split(torch.zeros(3, 2), torch.zeros(3, 1, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point"):
        Split(torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="uint8 inputs need mean and std"):
        Split(torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="n must be >= 1"):
        tiny_split().subset(0)
    sub = tiny_split(10).subset(4, seed=3)
    assert len(sub) == 4 and torch.equal(sub.x, tiny_split(10).subset(4, seed=3).x)


# ------------------------------------------------------------------------------------------ uint8 storage


def u8_split(n: int = 6, c: int = 3, mean: tuple = (0.5, 0.4, 0.3), std: tuple = (0.2, 0.25, 0.3)) -> Split:
    x = torch.randint(0, 256, (n, c, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Split(x, torch.arange(n) % 2, mean, std)


def test_uint8_split_normalizes_per_channel_on_take() -> None:
    split = u8_split()
    mean, std = torch.tensor([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    expected = (split.x.float() / 255 - mean) / std
    index = torch.tensor([4, 0, 2])
    out = split.take(index)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 4, 4)
    torch.testing.assert_close(out, expected[index], rtol=0, atol=1e-6)
    torch.testing.assert_close(split.take(slice(1, 3)), expected[1:3], rtol=0, atol=1e-6)
    torch.testing.assert_close(split.inputs, expected, rtol=0, atol=1e-6)
    assert split.x.dtype == torch.uint8  # x stays the stored tensor
    one = Split(split.x, split.y, [0.5], [0.2])  # one value for every channel; lists become tuples of floats
    assert one.mean == (0.5,) and one.std == (0.2,)
    torch.testing.assert_close(one.inputs, (split.x.float() / 255 - 0.5) / 0.2, rtol=0, atol=1e-6)


def test_float_split_take_and_inputs_are_plain_indexing() -> None:
    split = tiny_split(10)
    assert split.inputs is split.x and split.mean is None and split.std is None
    index = torch.tensor([3, 1])
    assert torch.equal(split.take(index), split.x[index])
    view = split.take(slice(2, 5))
    assert view.data_ptr() == split.x[2:].data_ptr()  # a slice of a float split is a view, not a copy


def test_uint8_split_errors() -> None:
    x, y = torch.zeros(3, 3, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="need mean and std"):
        Split(x, y, mean=(0.5,))
    with pytest.raises(ValueError, match="mean has 1 values but std has 3"):
        Split(x, y, (0.5,), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"one per channel \(3\)"):
        Split(x, y, (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(ValueError, match="std must be positive"):
        Split(x, y, (0.5,), (0.0,))
    with pytest.raises(TypeError, match="tuple of floats"):
        Split(x, y, "0.5", (0.2,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only for uint8 inputs"):
        Split(x.float(), y, (0.5,), (0.2,))  # a float split with mean/std would be ambiguous


def test_uint8_split_to_subset_and_batches_keep_mean_and_std() -> None:
    split = u8_split(10)
    moved = split.to("meta")
    assert moved.device == torch.device("meta") and moved.x.dtype == torch.uint8
    assert (moved.mean, moved.std) == (split.mean, split.std)
    assert moved.take(torch.tensor([1, 2], device="meta")).shape == (2, 3, 4, 4)
    sub = split.subset(4, seed=1)
    assert (sub.mean, sub.std) == (split.mean, split.std) and sub.x.dtype == torch.uint8
    out = list(batches(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    for b in out:
        assert b.x.dtype == torch.float32 and torch.equal(b.x, split.take(b.index))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uint8_split_on_cuda_matches_cpu() -> None:
    split = u8_split(10)
    cuda = split.to("cuda")
    assert (cuda.mean, cuda.std) == (split.mean, split.std) and cuda.x.dtype == torch.uint8
    torch.testing.assert_close(cuda.inputs.cpu(), split.inputs, rtol=0, atol=1e-6)


def test_uint8_fashion_mnist_equals_float32(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=40, n_test=10)
    kw = {"root": tmp_path, "device": "cpu", "train_size": 30, "seed": 3}
    f32, u8 = D.fashion_mnist(**kw), D.fashion_mnist(dtype="uint8", **kw)
    assert f32.train.x.dtype == torch.float32 and f32.train.mean is None
    assert u8.train.x.dtype == torch.uint8 and u8.test.x.dtype == torch.uint8
    assert (u8.train.mean, u8.train.std) == (u8.mean, u8.std) == ((0.2860,), (0.3530,))
    assert u8.input_shape == f32.input_shape == (1, 28, 28) and torch.equal(u8.train.y, f32.train.y)
    # 1 byte per pixel, against 4 for float32
    assert u8.train.x.untyped_storage().nbytes() == 30 * 28 * 28
    assert f32.train.x.untyped_storage().nbytes() == 4 * 30 * 28 * 28
    index = torch.tensor([5, 0, 29, 7])
    torch.testing.assert_close(u8.train.take(index), f32.train.take(index), rtol=0, atol=1e-6)
    torch.testing.assert_close(u8.test.inputs, f32.test.inputs, rtol=0, atol=1e-6)
    assert torch.equal(u8.test.inputs, f32.test.inputs)  # the same operations: equal bit for bit
    # batches, augmented, draw the same samples and crops and give the same normalized inputs
    assert isinstance(D.fashion_mnist(dtype="uint8", augment=True, **kw).augment, RandomCropFlip)
    aug = RandomCropFlip(2, True, fill=(-0.2860 / 0.3530,))
    pairs = zip(
        batches(f32.train, 8, shuffle=True, generator=torch.Generator().manual_seed(1), augment=aug),
        batches(u8.train, 8, shuffle=True, generator=torch.Generator().manual_seed(1), augment=aug),
        strict=True,
    )
    for a, b in pairs:
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y) and b.x.dtype == torch.float32
        torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-6)


def test_uint8_cifar10_equals_float32_per_channel(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py", n=3)
    f32, u8 = D.cifar10(root=tmp_path, device="cpu"), D.cifar10(root=tmp_path, device="cpu", dtype=torch.uint8)
    raw = written["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    assert torch.equal(u8.test.x, torch.from_numpy(raw))  # the raw pixels, untouched
    assert u8.train.mean == D.NORMALIZATION["cifar10"][0]
    torch.testing.assert_close(u8.train.inputs, f32.train.inputs, rtol=0, atol=1e-6)
    assert torch.equal(u8.train.inputs, f32.train.inputs)
    torch.testing.assert_close(u8.test.inputs, normalized(raw, "cifar10"))


def test_dtype_option_errors(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    with pytest.raises(ValueError, match="dtype must be 'float32'.*or 'uint8'"):
        D.mnist(root=tmp_path, device="cpu", dtype="float16")
    with pytest.raises(TypeError, match="dtype"):
        D.digits(dtype="uint8")  # type: ignore[call-arg]  # digits are 0..16, not 8-bit pixels


def test_with_unlabeled_on_uint8_data_takes_uint8_pixels(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=12)
    data = D.fashion_mnist(root=tmp_path, device="cpu", dtype="uint8")
    extra = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    out = D.with_unlabeled(data, extra)
    assert len(out.train) == 17 and out.train.x.dtype == torch.uint8
    assert (out.train.mean, out.train.std) == (data.train.mean, data.train.std)
    assert out.train.y[12:].tolist() == [D.UNLABELED] * 5
    torch.testing.assert_close(out.train.take(torch.arange(12, 17)), (extra.float() / 255 - 0.2860) / 0.3530)
    with pytest.raises(TypeError, match="must be uint8 pixels too"):
        D.with_unlabeled(data, data.train.inputs[:2])
    with pytest.raises(TypeError, match="floating-point"):
        D.with_unlabeled(D.fashion_mnist(root=tmp_path, device="cpu"), extra)


def test_library_readers_of_inputs_treat_uint8_like_float32() -> None:
    # (kdlib.train.predict/evaluate and the training loop are updated separately.)
    from kdlib.fidelity import fidelity_monitor
    from kdlib.protocol import holdout
    from kdlib.prune.batchnorm import recalibrate_batchnorm
    from kdlib.quantize.fake import calibration_batches

    train, test = u8_split(40), u8_split(12)
    u8 = D.Dataset("u8", train, test, 2, mean=train.mean, std=train.std)
    f32 = D.Dataset("f32", Split(train.inputs, train.y), Split(test.inputs, test.y), 2)
    for a, b in zip(calibration_batches(u8, 2, 16), calibration_batches(f32, 2, 16), strict=True):
        assert torch.equal(a, b)
    val = holdout(u8, 8)
    assert val.train.x.dtype == torch.uint8 and (val.test.mean, val.test.std) == (train.mean, train.std)
    assert torch.equal(val.test.inputs, holdout(f32, 8).test.inputs)

    def bn_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))

    a, b = (recalibrate_batchnorm(bn_model(), data, batches=2, batch_size=8) for data in (u8, f32))
    assert torch.equal(a[1].running_mean, b[1].running_mean) and torch.equal(a[1].running_var, b[1].running_var)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    monitors = [fidelity_monitor(teacher, data, samples=5).inputs for data in (u8, f32)]
    assert monitors[0].keys() == monitors[1].keys()
    assert all(torch.equal(monitors[0][k], monitors[1][k]) for k in monitors[0])


# --------------------------------------------------------------------------------------------- augmentation


def images(n: int = 16, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def reference_crop_flip(x: torch.Tensor, padding: int, flip: bool, fill: float, seed: int) -> torch.Tensor:
    """A per-sample loop with the documented random draws: offsets (N, 2), then flips (N,)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * padding + 1, (len(x), 2), generator=g)
    flips = torch.rand(len(x), generator=g) < 0.5 if flip else torch.zeros(len(x), dtype=torch.bool)
    padded = torch.nn.functional.pad(x, (padding,) * 4, value=fill)
    out = []
    for img, (dy, dx), f in zip(padded, offsets.tolist(), flips.tolist(), strict=True):
        crop = img[:, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


@pytest.mark.parametrize(("padding", "flip"), [(2, True), (4, False), (0, True), (3, True)])
def test_crop_flip_matches_per_sample_reference(padding: int, flip: bool) -> None:
    x = images(16, c=3, size=10)
    out = random_crop_flip(x, padding=padding, flip=flip, fill=-0.5, generator=torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    torch.testing.assert_close(out, reference_crop_flip(x, padding, flip, -0.5, seed=5), rtol=0, atol=0)


def test_augmentation_is_reproducible_and_changes_inputs() -> None:
    aug = RandomCropFlip(2, True)
    x = images(32, size=28)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).flatten(1).any(1).float().mean() > 0.5  # most images moved or mirrored
    assert x.equal(images(32, size=28))  # the input batch is not modified in place


def test_flip_only_where_enabled() -> None:
    x = images(64)
    plain = RandomCropFlip(0, False)(x, torch.Generator().manual_seed(0))
    assert torch.equal(plain, x)
    flipped = RandomCropFlip(0, True)(x, torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(flipped, x, strict=True)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(flipped, x, strict=True)])
    assert bool((mirrored | same).all()) and 10 < int(mirrored.sum()) < 54


def test_per_channel_fill_is_normalized_black(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", n=4)
    ds = D.cifar10(root=tmp_path, device="cpu", augment=True)
    batch = next(batches(ds.train, 20, shuffle=True, generator=torch.Generator().manual_seed(0), augment=ds.augment))
    assert batch.x.shape == (20, 3, 32, 32) and batch.x.dtype == torch.float32
    mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in D.NORMALIZATION["cifar10"])
    pixels = batch.x * std + mean
    # Any fully padded border row is exactly black in pixel space.
    top = pixels[:, :, 0, :].abs().amax(dim=(1, 2))
    assert top.min().item() == pytest.approx(0.0, abs=1e-6)


def test_augmentation_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop_flip(torch.zeros(4, 40), padding=2, flip=False)
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(-1, True)
    with pytest.raises(ValueError, match="fill has 2 values"):
        random_crop_flip(torch.zeros(2, 3, 4, 4), padding=1, flip=False, fill=(0.0, 1.0))


# ----------------------------------------------------------------------------------------------------- load


def test_load_dispatches_and_lists_names(tmp_path: Path) -> None:
    assert set(D.available()) == {"digits", "mnist1d", "fashion_mnist", "mnist", "cifar10", "cifar100"}
    assert D.load("digits", device="cpu", train_size=10).name == "digits"
    write_idx_set(tmp_path)
    assert D.load("Fashion-MNIST", root=tmp_path, device="cpu").name == "fashion_mnist"
    with pytest.raises(ValueError) as info:
        D.load("cifar-1O")
    msg = str(info.value)
    assert "Did you mean 'cifar10'" in msg
    for name in D.available():
        assert name in msg


# ------------------------------------------------------------------------------------- the real data, if any


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kdlib.data.files, "DEBIAN_DATASETS", REAL_FASHION_MNIST.parent)
    ds = D.fashion_mnist(device="cpu")
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.input_shape == (1, 28, 28)
    assert torch.bincount(ds.train.y).tolist() == [6000] * 10
    # The fixed constants are the training set's statistics, so the normalized set has mean 0 and std 1.
    assert abs(ds.train.x.mean().item()) < 1e-3 and abs(ds.train.x.std().item() - 1) < 1e-3


# --------------------------------------------------------------------------------------------- 1-D shifts


def test_random_shift_moves_signals_and_fills_with_zero() -> None:
    x = torch.arange(1.0, 11.0).repeat(64, 1)  # (64, 10), values 1..10, no zeros

    def shifted(k: int) -> torch.Tensor:  # out[i] = x[i - k], 0 where i - k falls outside
        return torch.tensor([float(i - k + 1) if 0 <= i - k < 10 else 0.0 for i in range(10)])

    out = D.random_shift(x, max_shift=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    candidates = [shifted(k) for k in range(-3, 4)]
    assert all(any(torch.equal(row, c) for c in candidates) for row in out)
    assert len({tuple(row.tolist()) for row in out}) == 7  # 64 draws hit all seven shifts
    assert torch.equal(out, D.random_shift(x, max_shift=3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(D.random_shift(x, max_shift=0), x)


def test_mnist1d_augment_sets_a_shift() -> None:
    ds = D.mnist1d(device="cpu", augment=True)
    assert isinstance(ds.augment, D.RandomShift) and ds.augment.max_shift == 4
    assert D.mnist1d(device="cpu", augment=6).augment == D.RandomShift(6)
    assert D.mnist1d(device="cpu").augment is None
