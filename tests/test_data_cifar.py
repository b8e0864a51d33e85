"""CIFAR python-version loader on tiny files written in the real format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from abd_edge.data import as_labeled_images, is_cifar_python_dir, load_cifar_python
from abd_edge.data.cifar import UnsafePickleError
from abd_edge.errors import ConfigError, DatasetError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _rows(labels: list[int], marker: int) -> np.ndarray:
    """One flat row per image; pixel (c, h, w) = (c*7 + h*3 + w + label + marker) % 256.

    A formula per position lets the test check that plane/row/column land
    where the format says, not just the shape.
    """
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    base = c * 7 + h * 3 + w
    out = np.stack([((base + lab + marker) % 256).reshape(-1) for lab in labels])
    return out.astype(np.uint8)


@pytest.fixture()
def cifar10_root(tmp_path: Path) -> Path:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for b in range(1, 6):
        labels = [(b + k) % 10 for k in range(4)]
        _dump(d / f"data_batch_{b}", {b"batch_label": b"training batch", b"labels": labels,
                                       b"data": _rows(labels, b), b"filenames": [b"x.png"] * 4})
    test_labels = list(range(10))
    _dump(d / "test_batch", {b"labels": test_labels, b"data": _rows(test_labels, 0)})
    _dump(d / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                               b"num_cases_per_batch": 4, b"num_vis": 3072})
    return tmp_path


@pytest.fixture()
def cifar100_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [0, 5, 99, 42, 7, 5]
    coarse = [4, 17, 19, 0, 3, 17]
    _dump(d / "train", {b"fine_labels": fine, b"coarse_labels": coarse, b"data": _rows(fine, 1)})
    _dump(d / "test", {b"fine_labels": fine[:2], b"coarse_labels": coarse[:2], b"data": _rows(fine[:2], 2)})
    _dump(d / "meta", {b"fine_label_names": [f"fine{i}" for i in range(100)],  # str, not bytes
                       b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return d


def test_cifar10_train_from_parent_dir(cifar10_root: Path) -> None:
    data = load_cifar_python(cifar10_root, train=True)
    assert data.images.dtype == torch.uint8
    assert tuple(data.images.shape) == (20, 3, 32, 32)
    expected_labels = [(b + k) % 10 for b in range(1, 6) for k in range(4)]
    assert data.labels == expected_labels
    assert all(type(v) is int for v in data.labels)
    assert data.class_names == dict(enumerate(CIFAR10_NAMES))
    # Image 5 is batch 2, k=1: label 3, marker 2. Pixel (c=2, h=10, w=31).
    assert int(data.images[5, 2, 10, 31]) == (2 * 7 + 10 * 3 + 31 + 3 + 2) % 256
    assert int(data.images[0, 0, 0, 1]) == (1 + 1 + 1) % 256
    assert int(data.images[0, 1, 0, 0]) == (7 + 1 + 1) % 256


def test_cifar10_test_split_from_batches_dir(cifar10_root: Path) -> None:
    data = load_cifar_python(cifar10_root / "cifar-10-batches-py", train=False)
    assert tuple(data.images.shape) == (10, 3, 32, 32)
    assert data.labels == list(range(10))
    assert int(data.images[9, 1, 31, 0]) == (7 + 31 * 3 + 9) % 256


def test_cifar100_fine_and_coarse(cifar100_dir: Path) -> None:
    fine = load_cifar_python(cifar100_dir, train=True)
    assert tuple(fine.images.shape) == (6, 3, 32, 32)
    assert fine.labels == [0, 5, 99, 42, 7, 5]
    assert len(fine.class_names) == 100 and fine.class_names[99] == "fine99"
    coarse = load_cifar_python(cifar100_dir.parent, train=True, label_kind="coarse")
    assert coarse.labels == [4, 17, 19, 0, 3, 17]
    assert coarse.class_names[17] == "coarse17" and len(coarse.class_names) == 20
    test = load_cifar_python(cifar100_dir, train=False)
    assert test.labels == [0, 5]
    assert int(test.images[1, 2, 3, 4]) == (14 + 9 + 4 + 5 + 2) % 256


def test_adapter_detects_cifar_directory(cifar100_dir: Path) -> None:
    assert is_cifar_python_dir(cifar100_dir)
    assert is_cifar_python_dir(cifar100_dir.parent)
    assert as_labeled_images(cifar100_dir).labels == [0, 5, 99, 42, 7, 5]


def test_missing_batch_names_path(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar_python(cifar10_root, train=True)
    # The test split does not need it.
    assert len(load_cifar_python(cifar10_root, train=False)) == 10


def test_not_a_cifar_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_cifar_python(tmp_path, train=True)
    assert not is_cifar_python_dir(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_cifar_python(tmp_path / "nope", train=True)


def test_bad_label_kind(cifar10_root: Path, cifar100_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'medium'"):
        load_cifar_python(cifar100_dir, train=True, label_kind="medium")
    with pytest.raises(ConfigError, match="CIFAR-10"):
        load_cifar_python(cifar10_root / "cifar-10-batches-py", train=True, label_kind="coarse")


def test_parent_with_both_variants_is_ambiguous(cifar10_root: Path, cifar100_dir: Path) -> None:
    assert cifar100_dir.parent == cifar10_root  # both fixtures share tmp_path
    with pytest.raises(DatasetError, match="both"):
        load_cifar_python(cifar10_root, train=True)
    assert len(load_cifar_python(cifar100_dir, train=True)) == 6


def test_label_out_of_range(cifar100_dir: Path) -> None:
    _dump(cifar100_dir / "test", {b"fine_labels": [100], b"coarse_labels": [0], b"data": _rows([0], 0)})
    with pytest.raises(DatasetError, match="label 100"):
        load_cifar_python(cifar100_dir, train=False)


def test_wrong_data_shape(cifar100_dir: Path) -> None:
    _dump(cifar100_dir / "test", {b"fine_labels": [1], b"data": np.zeros((1, 100), np.uint8)})
    with pytest.raises(DatasetError, match=r"\(N, 3072\)"):
        load_cifar_python(cifar100_dir, train=False)


def test_truncated_file(cifar100_dir: Path) -> None:
    raw = (cifar100_dir / "train").read_bytes()
    (cifar100_dir / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="not a readable CIFAR"):
        load_cifar_python(cifar100_dir, train=True)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):  # noqa: ANN204
        return (eval, ("__import__('os').getpid()",))


def test_malicious_pickle_is_refused_without_running(cifar100_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _dump(cifar100_dir / "train", {b"fine_labels": [0], b"data": _Evil(marker)})
    with pytest.raises(UnsafePickleError, match="system"):
        load_cifar_python(cifar100_dir, train=True)
    assert not marker.exists()
    _dump(cifar100_dir / "meta", _EvalEvil())
    with pytest.raises(UnsafePickleError, match=r"(__builtin__|builtins)\.eval"):
        load_cifar_python(cifar100_dir, train=False)
    assert issubclass(UnsafePickleError, DatasetError)


def test_object_dtype_array_refused(cifar100_dir: Path) -> None:
    arr = np.array([{"x": 1}], dtype=object)
    _dump(cifar100_dir / "test", {b"fine_labels": [0], b"data": arr})
    with pytest.raises(UnsafePickleError, match="object dtype"):
        load_cifar_python(cifar100_dir, train=False)


def test_codecs_encode_other_codec_refused(cifar100_dir: Path) -> None:
    # A hand-built protocol-2 pickle calling _codecs.encode with a non-latin1 codec.
    payload = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04."
    (cifar100_dir / "meta").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="rot13"):
        load_cifar_python(cifar100_dir, train=True)


def _py2_names_pickle(key: bytes, names: list[bytes]) -> bytes:
    """What Python 2 writes: str keys/values as SHORT_BINSTRING, no _codecs calls."""
    out = b"\x80\x02}U" + bytes([len(key)]) + key + b"]("
    for n in names:
        out += b"U" + bytes([len(n)]) + n
    return out + b"es."


def test_python2_style_pickles(cifar10_root: Path) -> None:
    d = cifar10_root / "cifar-10-batches-py"
    (d / "batches.meta").write_bytes(_py2_names_pickle(b"label_names", [n.encode() for n in CIFAR10_NAMES]))
    # The real files name numpy's old module path, which numpy 2 only keeps as an alias.
    raw = (d / "test_batch").read_bytes()
    assert b"numpy._core.multiarray" in raw
    (d / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data = load_cifar_python(d, train=False)
    assert data.class_names[9] == "truck"
    assert data.labels == list(range(10))
