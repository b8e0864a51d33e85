"""Image folder, digits, user .npz and CIFAR-10 JPEG .npz loaders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from abd_edge.data import (
    as_labeled_images,
    load_cifar10_jpeg,
    load_digits,
    load_image_folder,
    load_npz,
)
from abd_edge.data import jpeg_npz
from abd_edge.errors import ConfigError, DatasetError, ImageSpecError, LabelError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _real_jpeg_npz() -> Path:
    env = os.environ.get("ABD_EDGE_CIFAR10_JPEG")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cifar10_jpeg.npz"
    if not path.is_file():
        pytest.skip(f"CIFAR-10 JPEG file not present at {path}")
    return path


# --------------------------------------------------------------------------- folder


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int | tuple = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_folder_rgb_sorted_labels(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "b.png", (5, 4), value=(10, 20, 30))
    _png(tmp_path / "dog" / "a.jpg", (5, 4), value=(200, 0, 0))
    _png(tmp_path / "cat" / "z.bmp", (5, 4), value=(1, 2, 3))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert tuple(data.images.shape) == (3, 3, 4, 5)
    assert data.images.dtype == torch.uint8
    assert data.labels == ["cat", "dog", "dog"]
    assert data.class_names == {"cat": "cat", "dog": "dog"}
    assert data.images[0, :, 0, 0].tolist() == [1, 2, 3]
    assert data.images[2, :, 3, 4].tolist() == [10, 20, 30]  # b.png sorts after a.jpg
    assert abs(int(data.images[1, 0, 0, 0]) - 200) <= 3  # JPEG is lossy


def test_folder_grey_kept_one_channel(tmp_path: Path) -> None:
    _png(tmp_path / "0" / "a.png", (3, 3), "L", 7)
    _png(tmp_path / "1" / "a.png", (3, 3), "L", 250)
    data = load_image_folder(tmp_path)
    assert tuple(data.images.shape) == (2, 1, 3, 3)
    assert data.images[:, 0, 1, 1].tolist() == [7, 250]
    forced = load_image_folder(tmp_path, channels=3)
    assert tuple(forced.images.shape) == (2, 3, 3, 3)
    assert forced.images[1, :, 0, 0].tolist() == [250, 250, 250]


def test_folder_mixed_grey_and_rgb_become_rgb(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "g.png", (2, 2), "L", 99)
    _png(tmp_path / "b" / "c.png", (2, 2), "RGB", (1, 2, 3))
    data = load_image_folder(tmp_path)
    assert tuple(data.images.shape) == (2, 3, 2, 2)
    assert data.images[0, :, 0, 0].tolist() == [99, 99, 99]
    grey = load_image_folder(tmp_path, channels=1)
    assert grey.images.shape[1] == 1


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "1.png", (4, 4))
    _png(tmp_path / "b" / "2.png", (6, 5))
    with pytest.raises(ImageSpecError) as info:
        load_image_folder(tmp_path)
    msg = str(info.value)
    assert "2.png" in msg and "6x5" in msg and "4x4" in msg
    resized = load_image_folder(tmp_path, size=8)
    assert tuple(resized.images.shape) == (2, 3, 8, 8)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class subdirectories"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ConfigError, match="channels"):
        load_image_folder(tmp_path, channels=2)
    with pytest.raises(ConfigError, match="size"):
        load_image_folder(tmp_path, size=0)
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageSpecError, match="broken.png"):
        load_image_folder(tmp_path)


def test_adapter_path_to_folder(tmp_path: Path) -> None:
    _png(tmp_path / "x" / "1.png", (2, 2), "L", 3)
    assert as_labeled_images(str(tmp_path)).labels == ["x"]


# --------------------------------------------------------------------------- digits


def test_digits_split() -> None:
    train = load_digits(train=True)
    test = load_digits(train=False)
    assert len(train) + len(test) == 1797
    assert train.images.dtype == torch.float32
    assert tuple(train.images.shape[1:]) == (1, 8, 8)
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert set(train.labels) == set(range(10)) == set(test.labels)
    assert train.class_names == {i: str(i) for i in range(10)}
    assert abs(len(test) / 1797 - 0.25) < 0.01
    # Stratified: each class's test share is close to the fraction.
    for c in range(10):
        n_test, n_train = test.labels.count(c), train.labels.count(c)
        assert abs(n_test / (n_test + n_train) - 0.25) < 0.02


def test_digits_deterministic_and_disjoint() -> None:
    from sklearn.datasets import load_digits as sk_digits

    a, b = load_digits(train=False, seed=3), load_digits(train=False, seed=3)
    assert torch.equal(a.images, b.images) and a.labels == b.labels
    other = load_digits(train=False, seed=4)
    assert not torch.equal(a.images, other.images)
    # Disjoint and complete: rebuild indices by matching against the source rows.
    src = np.asarray(sk_digits().images, dtype=np.float32) / 16
    rows = {src[i].tobytes(): i for i in range(len(src))}
    train = load_digits(train=True, seed=3)
    tr = [rows[x.numpy()[0].tobytes()] for x in train.images]
    te = [rows[x.numpy()[0].tobytes()] for x in a.images]
    # A few digits are exact duplicates, so compare counts rather than index sets.
    assert len(tr) + len(te) == 1797
    assert len(set(tr) | set(te)) == len(rows)


def test_digits_bad_fraction() -> None:
    with pytest.raises(ConfigError, match="1.5"):
        load_digits(train=True, test_fraction=1.5)


# --------------------------------------------------------------------------- user npz


def test_npz_nhwc_with_class_names(tmp_path: Path) -> None:
    images = np.zeros((4, 6, 5, 3), np.uint8)
    images[2, 1, 4, 0] = 77
    labels = np.array([2, 0, 2, 1])
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["zero", "one", "two"]))
    data = load_npz(path)
    assert tuple(data.images.shape) == (4, 3, 6, 5)
    assert int(data.images[2, 0, 1, 4]) == 77
    assert data.labels == [2, 0, 2, 1] and all(type(v) is int for v in data.labels)
    assert data.class_names == {0: "zero", 1: "one", 2: "two"}


def test_npz_string_labels_and_class_label_pairs(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(
        path,
        images=np.full((2, 1, 3, 3), 0.5, np.float64),
        labels=np.array(["b", "a"]),
        class_labels=np.array(["a", "b"]),
        class_names=np.array(["Alpha", "Beta"]),
    )
    data = load_npz(path)
    assert data.images.dtype == torch.float32
    assert data.labels == ["b", "a"] and all(type(v) is str for v in data.labels)
    assert data.class_names == {"a": "Alpha", "b": "Beta"}


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "e.npz"
    np.savez(path, images=np.zeros((2, 1, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="labels"):
        load_npz(path)
    np.savez(path, images=np.zeros((2, 1, 2, 2), np.uint8), labels=np.array([0, 1]),
             class_names=np.array(["only one"]))
    with pytest.raises(LabelError, match="1 entries"):
        load_npz(path)
    with pytest.raises(ConfigError, match="split"):
        load_npz(path, split="test")
    np.savez(path, images=np.zeros((2, 1, 2, 2), np.uint8), labels=np.array([0, 1, 1]))
    with pytest.raises(DatasetError, match="2 images, 3 labels"):
        load_npz(path)
    np.savez(path, images=np.zeros((2, 1, 2, 2), np.uint8), labels=np.array([0, None], dtype=object))
    with pytest.raises(DatasetError, match="object array"):
        load_npz(path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")


# --------------------------------------------------------------------------- CIFAR-10 JPEG npz


def _jpeg_bytes(rgb: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_jpeg_npz(path: Path, train_colors: list, train_labels: list, test_colors: list,
                    test_labels: list) -> None:
    def pack(colors: list) -> tuple[np.ndarray, np.ndarray]:
        blobs = [_jpeg_bytes(c) for c in colors]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        return np.frombuffer(b"".join(blobs), np.uint8), offsets

    tj, to = pack(train_colors)
    sj, so = pack(test_colors)
    np.savez(path, train_jpeg=tj, train_offsets=to, train_labels=np.array(train_labels, np.int64),
             test_jpeg=sj, test_offsets=so, test_labels=np.array(test_labels, np.int64),
             class_names=np.array(["red", "green", "blue"]))


@pytest.fixture()
def small_jpeg_npz(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.npz"
    _write_jpeg_npz(path, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0)], [0, 1, 2, 0],
                    [(0, 0, 255)], [2])
    jpeg_npz.clear_cache()
    return path


def test_jpeg_npz_decodes_and_caches(small_jpeg_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_cifar10_jpeg(small_jpeg_npz, train=True)
    assert tuple(data.images.shape) == (4, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels == [0, 1, 2, 0]
    assert data.class_names == {0: "red", 1: "green", 2: "blue"}
    centre = data.images[:, :, 4, 4].int()
    assert (centre.argmax(dim=1) == torch.tensor([0, 1, 2, 0])).all()
    assert int(centre.max()) > 240
    calls = []
    monkeypatch.setattr(jpeg_npz, "_decode_split", lambda *a: calls.append(a) or None)
    again = load_cifar10_jpeg(small_jpeg_npz, train=True)
    assert calls == [] and again.images is data.images  # served from the cache
    test = jpeg_npz._CACHE  # the test split is a different entry
    assert len(test) == 1


def test_jpeg_npz_cache_invalidated_by_mtime(small_jpeg_npz: Path) -> None:
    first = load_cifar10_jpeg(small_jpeg_npz, train=False)
    assert first.labels == [2]
    _write_jpeg_npz(small_jpeg_npz, [(255, 0, 0)], [0], [(0, 255, 0), (0, 255, 0)], [1, 1])
    st = small_jpeg_npz.stat()
    os.utime(small_jpeg_npz, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_cifar10_jpeg(small_jpeg_npz, train=False)
    assert second.labels == [1, 1]
    assert len(jpeg_npz._CACHE) == 1  # the stale entry was dropped


def test_jpeg_npz_pil_fallback_matches(small_jpeg_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tv = load_cifar10_jpeg(small_jpeg_npz, train=True).images
    jpeg_npz.clear_cache()
    monkeypatch.setattr(jpeg_npz, "_decode_torchvision", lambda chunks: None)
    pil = load_cifar10_jpeg(small_jpeg_npz, train=True).images
    assert pil.shape == tv.shape
    assert int((pil.int() - tv.int()).abs().max()) <= 2  # decoders may round differently


def test_jpeg_npz_via_load_npz_and_adapter(small_jpeg_npz: Path) -> None:
    assert load_npz(small_jpeg_npz).labels == [0, 1, 2, 0]
    assert load_npz(small_jpeg_npz, split="test").labels == [2]
    assert as_labeled_images(small_jpeg_npz).labels == [0, 1, 2, 0]


def test_jpeg_npz_bad_offsets(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    _write_jpeg_npz(path, [(1, 2, 3)], [0], [(1, 2, 3)], [0])
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_offsets"] = arrays["train_offsets"] + 1
    np.savez(path, **arrays)
    jpeg_npz.clear_cache()
    with pytest.raises(DatasetError, match="train_offsets"):
        load_cifar10_jpeg(path, train=True)
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10_jpeg(tmp_path / "none.npz", train=True)


def test_real_cifar10_jpeg_train() -> None:
    path = _real_jpeg_npz()
    data = load_cifar10_jpeg(path, train=True)
    assert tuple(data.images.shape) == (50000, 3, 32, 32)
    assert data.images.dtype == torch.uint8
    counts = np.bincount(np.array(data.labels), minlength=10)
    assert counts.tolist() == [5000] * 10
    # numpy's integer sum is ~30x faster than torch's uint8 reductions on CPU.
    sums = data.images.numpy().reshape(50000, 3, -1).sum(axis=(0, 2), dtype=np.int64)
    mean = sums / (50000 * 32 * 32 * 255)
    assert np.allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-3), mean
    assert data.class_names[0] == "airplane" and data.class_names[9] == "truck"


def test_real_cifar10_jpeg_test() -> None:
    path = _real_jpeg_npz()
    data = load_cifar10_jpeg(path, train=False)
    assert tuple(data.images.shape) == (10000, 3, 32, 32)
    assert np.bincount(np.array(data.labels), minlength=10).tolist() == [1000] * 10
