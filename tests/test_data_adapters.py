"""The input boundary: every accepted form, and every refusal with its error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from abd_edge.data import LabeledImages, as_labeled_images
from abd_edge.errors import DatasetError, ImageSpecError, LabelError


def test_labeled_images_passthrough_revalidated() -> None:
    li = LabeledImages(torch.zeros(2, 3, 4, 4, dtype=torch.float64), [1, 0], {0: "a", 1: "b"})
    out = as_labeled_images(li)
    assert out.images.dtype == torch.float32
    assert out.labels == [1, 0] and out.class_names == {0: "a", 1: "b"}
    bad = LabeledImages(torch.full((1, 1, 2, 2), 3.0), [0])
    with pytest.raises(ImageSpecError, match=r"\[0, 1\]"):
        as_labeled_images(bad)
    with pytest.raises(DatasetError, match="already has labels"):
        as_labeled_images(li, [0, 1])


def test_nchw_uint8_numpy_shared_not_mutated() -> None:
    arr = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    before = arr.copy()
    out = as_labeled_images(arr, np.array([4, 5]))
    assert tuple(out.images.shape) == (2, 3, 2, 2) and out.images.dtype == torch.uint8
    assert out.labels == [4, 5] and all(type(v) is int for v in out.labels)
    assert np.array_equal(arr, before)


def test_nhwc_tuple_and_grey_nhw() -> None:
    arr = np.zeros((3, 5, 6, 3), np.uint8)
    arr[1, 2, 4, 2] = 9
    out = as_labeled_images((arr, [0, 1, 2]))
    assert tuple(out.images.shape) == (3, 3, 5, 6)
    assert int(out.images[1, 2, 2, 4]) == 9
    grey = as_labeled_images(torch.rand(4, 7, 7), torch.tensor([0, 1, 0, 1]))
    assert tuple(grey.images.shape) == (4, 1, 7, 7)
    single = as_labeled_images(np.zeros((2, 8, 8, 1), np.float32), ["a", "b"])
    assert tuple(single.images.shape) == (2, 1, 8, 8)


def test_nchw_with_three_wide_images_is_not_permuted() -> None:
    # (N, 3, H, 3): channel axis is dim 1, which is 3, so no permute.
    out = as_labeled_images(np.zeros((2, 3, 5, 3), np.uint8), [0, 1])
    assert tuple(out.images.shape) == (2, 3, 5, 3)


def test_dtype_conversions() -> None:
    f16 = as_labeled_images(torch.full((1, 1, 2, 2), 0.5, dtype=torch.float16), [0])
    assert f16.images.dtype == torch.float32
    i64 = np.full((1, 1, 2, 2), 200, np.int64)
    out = as_labeled_images(i64, [0])
    assert out.images.dtype == torch.uint8 and int(out.images.max()) == 200
    assert i64.dtype == np.int64  # caller's array untouched
    u16 = as_labeled_images(torch.full((1, 1, 2, 2), 255, dtype=torch.int32), [0])
    assert u16.images.dtype == torch.uint8
    np_u16 = as_labeled_images(np.full((1, 1, 2, 2), 17, np.uint16), [0])
    assert int(np_u16.images[0, 0, 0, 0]) == 17


def test_readonly_array_is_accepted() -> None:
    arr = np.zeros((1, 3, 2, 2), np.uint8)
    arr.setflags(write=False)
    out = as_labeled_images(arr, [0])
    out.images.add_(1)  # must not fail, nor touch the read-only source
    assert int(arr.max()) == 0


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.zeros((1, 1, 2, 2), bool), "bool"),
        (np.zeros((1, 1, 2, 2), np.complex64), "complex64"),
        (np.array([[[["a"]]]]), "<U1"),
        (np.zeros((1, 1, 2, 2), object), "object"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.bool), "torch.bool"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.complex64), "complex64"),
    ],
)
def test_non_numeric_dtypes(bad: object, fragment: str) -> None:
    with pytest.raises(ImageSpecError, match=fragment):
        as_labeled_images(bad, [0])


def test_nan_and_inf() -> None:
    x = torch.zeros(3, 1, 2, 2)
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(ImageSpecError, match="NaN.*image 2"):
        as_labeled_images(x, [0, 1, 2])
    y = np.zeros((1, 1, 2, 2), np.float32)
    y[0, 0, 0, 0] = np.inf
    with pytest.raises(ImageSpecError, match="infinite"):
        as_labeled_images(y, [0])


def test_float_range() -> None:
    with pytest.raises(ImageSpecError, match=r"floats? .*\[0, 1\].*255"):
        as_labeled_images(np.full((1, 3, 2, 2), 255.0, np.float32), [0])
    with pytest.raises(ImageSpecError, match=r"\[0, 1\]"):
        as_labeled_images(torch.full((1, 3, 2, 2), -0.5), [0])
    x = torch.full((1, 1, 2, 2), 1.0005)
    out = as_labeled_images(x, [0])
    assert float(out.images.max()) == 1.0
    assert float(x.max()) > 1.0  # clamped copy, caller's tensor untouched


def test_integers_outside_uint8_range() -> None:
    with pytest.raises(ImageSpecError, match="0..255.*256"):
        as_labeled_images(np.full((1, 1, 2, 2), 256, np.int32), [0])
    with pytest.raises(ImageSpecError, match="-1"):
        as_labeled_images(torch.full((1, 1, 2, 2), -1, dtype=torch.int16), [0])


def test_counts_and_empty() -> None:
    with pytest.raises(DatasetError, match="3 images, 2 labels"):
        as_labeled_images(np.zeros((3, 1, 2, 2), np.uint8), [0, 1])
    with pytest.raises(DatasetError, match="empty"):
        as_labeled_images(np.zeros((0, 1, 2, 2), np.uint8), [])
    with pytest.raises(DatasetError, match="empty"):
        as_labeled_images([])
    with pytest.raises(ImageSpecError, match=r"shape \(2, 2\)"):
        as_labeled_images(np.zeros((2, 2), np.uint8), [0, 1])


@pytest.mark.parametrize(
    "labels, error, fragment",
    [
        ([0.5], LabelError, "0.5"),
        ([None], LabelError, "None"),
        (None, LabelError, "missing"),
        (np.array([1.25]), LabelError, "1.25"),
        ([True], LabelError, "bool"),
        ([0, "a"], LabelError, "mix"),
        ([(1, 2)], LabelError, "tuple"),
        (np.zeros((1, 3)), LabelError, "one-dimensional"),
    ],
)
def test_bad_labels(labels: object, error: type, fragment: str) -> None:
    n = 2 if isinstance(labels, list) and len(labels) == 2 else 1
    with pytest.raises(error, match=fragment):
        as_labeled_images(np.zeros((n, 1, 2, 2), np.uint8), labels)


def test_label_conversions() -> None:
    imgs = np.zeros((3, 1, 2, 2), np.uint8)
    assert as_labeled_images(imgs, torch.tensor([3, 1, 2])).labels == [3, 1, 2]
    assert as_labeled_images(imgs, np.array([2.0, 1.0, 0.0])).labels == [2, 1, 0]
    strs = as_labeled_images(imgs, np.array(["x", "y", "x"])).labels
    assert strs == ["x", "y", "x"] and all(type(v) is str for v in strs)
    assert as_labeled_images(imgs, [np.int64(1), torch.tensor(2), 0]).labels == [1, 2, 0]
    assert as_labeled_images(imgs, np.array([[1], [2], [3]])).labels == [1, 2, 3]


class _PairDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.items[i]


def test_torch_dataset_of_tensors() -> None:
    ds = TensorDataset(torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4]))
    out = as_labeled_images(ds)
    assert tuple(out.images.shape) == (5, 3, 4, 4)
    assert out.labels == [0, 1, 2, 3, 4]
    assert torch.equal(out.images, ds.tensors[0])


def test_dataset_of_pil_and_hwc_numpy() -> None:
    pil = [(Image.new("RGB", (4, 3), (9, 8, 7)), "a"), (Image.new("RGB", (4, 3), (1, 2, 3)), "b")]
    out = as_labeled_images(_PairDataset(pil))
    assert tuple(out.images.shape) == (2, 3, 3, 4) and out.images.dtype == torch.uint8
    assert out.images[0, :, 2, 3].tolist() == [9, 8, 7]
    grey = as_labeled_images(_PairDataset([(Image.new("L", (2, 2), 5), 0)]))
    assert tuple(grey.images.shape) == (1, 1, 2, 2)
    hwc = np.zeros((6, 5, 3), np.uint8)
    hwc[1, 2, 0] = 44
    out = as_labeled_images(_PairDataset([(hwc, 1), (hwc.copy(), 2)]))
    assert tuple(out.images.shape) == (2, 3, 6, 5) and int(out.images[0, 0, 1, 2]) == 44
    # A plain list of (image, label) pairs counts as a dataset too.
    assert as_labeled_images([(torch.zeros(1, 2, 2), 0)]).labels == [0]


def test_dataset_errors() -> None:
    mixed = _PairDataset([(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 5, 5), 1)])
    with pytest.raises(ImageSpecError, match="sample 1.*sample 0"):
        as_labeled_images(mixed)
    dtypes = _PairDataset([(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 4, 4, dtype=torch.uint8), 1)])
    with pytest.raises(ImageSpecError, match="dtype"):
        as_labeled_images(dtypes)
    with pytest.raises(DatasetError, match="pair"):
        as_labeled_images(_PairDataset([torch.zeros(3, 4, 4)]))
    with pytest.raises(DatasetError, match="str"):
        as_labeled_images(_PairDataset([("not an image", 0)]))
    with pytest.raises(LabelError, match="None"):
        as_labeled_images(_PairDataset([(torch.zeros(1, 2, 2), None)]))
    with pytest.raises(ImageSpecError, match=r"\[0, 1\]"):
        as_labeled_images(_PairDataset([(torch.full((1, 2, 2), 2.0), 0)]))
    with pytest.raises(DatasetError, match="cannot use a int"):
        as_labeled_images(5)


def test_mapping_and_npz_file(tmp_path: Path) -> None:
    out = as_labeled_images({"images": np.zeros((2, 1, 2, 2), np.uint8), "labels": [0, 1]})
    assert out.labels == [0, 1]
    with pytest.raises(DatasetError, match="'images' and 'labels'"):
        as_labeled_images({"x": 1})
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 2, 2, 3), np.uint8), labels=np.array([1, 0]))
    assert tuple(as_labeled_images(path).images.shape) == (2, 3, 2, 2)
    with np.load(path) as opened:
        assert as_labeled_images(opened).labels == [1, 0]


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        as_labeled_images(tmp_path / "missing")
    other = tmp_path / "file.csv"
    other.write_text("1,2")
    with pytest.raises(DatasetError, match="file.csv"):
        as_labeled_images(other)
    with pytest.raises(DatasetError, match="labels cannot be passed with a path"):
        as_labeled_images(str(other), [0])
