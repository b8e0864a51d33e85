"""The single entry point that turns user data into :class:`LabeledImages`.

Every Learner call goes through :func:`as_labeled_images`, so this is the one
place where bad input is caught. Catching it here, with a message naming the
offending value, is much cheaper for the user than a shape error deep inside
a convolution or a silently wrong accuracy caused by 0..255 floats.

The helpers :func:`images_to_tensor` and :func:`labels_to_list` are shared by
the file loaders (``npz.py``) so that a file and an in-memory array obey
exactly the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ..errors import DatasetError, ImageSpecError, LabelError
from .images import LabeledImages

__all__ = ["as_labeled_images", "images_to_tensor", "labels_to_list", "with_batch_axis"]

# Tolerance for float images: values a rounding step outside [0, 1] come from
# resampling or normalisation arithmetic and are clamped; anything further out
# is almost always 0..255 data stored as float, which must be refused.
_FLOAT_TOLERANCE = 1e-3

_NUMPY_INT_KINDS = "iu"
_TORCH_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_channel_last(shape: Sequence[int], channel_dim: int) -> bool:
    """Channel-last when the last axis looks like channels and ``channel_dim`` does not.

    Only 1 (grey) and 3 (RGB) count as channel sizes: the rule must not
    mistake an N x 32 x 32 x 4 batch of something for NCHW with 32 channels,
    nor a 3 x 32 x 32 CHW image for HWC.
    """
    return shape[-1] in (1, 3) and shape[channel_dim] not in (1, 3)


def _numpy_images_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """Convert dtype in numpy first: torch lacks most ops on uint16/uint32/uint64."""
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)  # new array: the caller's is untouched
    elif kind in _NUMPY_INT_KINDS:
        if arr.dtype != np.uint8:
            if arr.size:
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi > 255:
                    raise ImageSpecError(
                        f"integer images must be in 0..255, got values {lo}..{hi} "
                        f"(dtype {arr.dtype}); scale them to uint8 or to floats in [0, 1]"
                    )
            arr = arr.astype(np.uint8)
    else:
        raise ImageSpecError(
            f"images must have a numeric dtype (uint8 or float), got numpy dtype {arr.dtype}"
        )
    if not arr.flags.writeable:
        # torch.from_numpy warns on read-only memory (np.load mmap, frombuffer)
        # and a later in-place op would fail; one copy avoids both.
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr))


def _torch_images_to_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.device.type != "cpu":
        # LabeledImages lives in host memory; batches go to the device later.
        t = t.cpu()
    if t.dtype in _TORCH_FLOATS:
        return t if t.dtype == torch.float32 else t.to(torch.float32)
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.is_complex() or t.is_floating_point():
        raise ImageSpecError(
            f"images must have a numeric dtype (uint8 or float), got torch dtype {t.dtype}"
        )
    # Other integer dtypes: check the range in int64, which every op supports.
    if t.numel():
        wide = t.to(torch.int64)
        lo, hi = int(wide.min()), int(wide.max())
        if lo < 0 or hi > 255:
            raise ImageSpecError(
                f"integer images must be in 0..255, got values {lo}..{hi} "
                f"(dtype {t.dtype}); scale them to uint8 or to floats in [0, 1]"
            )
        return wide.to(torch.uint8)
    return t.to(torch.uint8)


def _check_float_values(t: torch.Tensor) -> torch.Tensor:
    """Refuse NaN/inf and out-of-range floats; clamp rounding-level overshoot."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        per_image = finite.reshape(finite.shape[0], -1).all(dim=1)
        first_bad = int((~per_image).nonzero()[0, 0])
        raise ImageSpecError(
            f"images contain NaN or infinite values (first in image {first_bad}); "
            "every pixel must be a finite number in [0, 1]"
        )
    lo, hi = float(t.min()), float(t.max())
    if lo < -_FLOAT_TOLERANCE:
        raise ImageSpecError(
            f"float images must be in [0, 1], got values {lo:.4g}..{hi:.4g}: negative values mean the images "
            "were normalised (e.g. transforms.Normalize(mean, std)). Pass them before normalisation, as floats "
            "in [0, 1] (transforms.ToTensor(), or v2.ToImage() + v2.ToDtype(torch.float32, scale=True)) or as "
            "uint8 (v2.PILToTensor()): the learner normalises with its own statistics and keeps them in the model"
        )
    if hi > 1.0 + _FLOAT_TOLERANCE:
        raise ImageSpecError(
            f"float images must be in [0, 1], got values {lo:.4g}..{hi:.4g}; "
            "divide 0..255 data by 255 or pass it as uint8"
        )
    if lo < 0.0 or hi > 1.0:
        t = t.clamp(0.0, 1.0)  # out of place: the caller's tensor is untouched
    return t


def images_to_tensor(images: Any) -> torch.Tensor:
    """Validate a batch of images and return it as a CPU tensor (N, C, H, W).

    Accepts numpy arrays and torch tensors shaped (N, C, H, W), (N, H, W, C)
    or (N, H, W). The result is uint8 (0..255) or float32 (0..1): the two
    forms the training loop knows how to normalise. The input is never
    modified; it may be shared when no conversion was needed.
    """
    if isinstance(images, np.ndarray):
        t = _numpy_images_to_tensor(images)
    elif isinstance(images, torch.Tensor):
        t = _torch_images_to_tensor(images)
    else:
        raise DatasetError(
            f"images must be a numpy array or a torch tensor, got {type(images).__name__}"
        )
    if t.dim() == 3:
        t = t.unsqueeze(1)  # (N, H, W) grey -> (N, 1, H, W)
    elif t.dim() == 4:
        if _is_channel_last(t.shape, 1):
            t = t.permute(0, 3, 1, 2)
    else:
        raise ImageSpecError(
            f"images must have shape (N, C, H, W), (N, H, W, C) or (N, H, W), "
            f"got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise DatasetError("the dataset is empty: 0 images")
    if t.shape[2] == 0 or t.shape[3] == 0 or t.shape[1] == 0:
        raise ImageSpecError(f"images have an empty dimension: shape {tuple(t.shape)}")
    t = t.contiguous()
    if t.is_floating_point():
        t = _check_float_values(t)
    return t


def _one_label(value: Any, index: int) -> Hashable:
    """Normalise one label to int or str; refuse anything that is not clearly a class."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise LabelError(
                f"label {index} is a tensor of shape {tuple(value.shape)}; expected one value per image"
            )
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.size != 1:
            raise LabelError(
                f"label {index} is an array of shape {value.shape}; expected one value per image"
            )
        value = value.reshape(()).item()
    if value is None:
        raise LabelError(f"label {index} is None; every image needs an int or str label")
    if isinstance(value, (bool, np.bool_)):
        raise LabelError(f"label {index} is a bool ({value!r}); use ints or strings as labels")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not np.isfinite(f) or f != int(f):
            raise LabelError(
                f"label {index} is {f!r}, not an integer; labels must be ints or strings"
            )
        return int(f)
    if isinstance(value, str):
        return str(value)  # np.str_ -> str, so labels compare and serialise plainly
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise LabelError(f"label {index} is bytes {value!r} that are not UTF-8 text") from None
    raise LabelError(
        f"label {index} has type {type(value).__name__} ({value!r}); labels must be ints or strings"
    )


def labels_to_list(labels: Any, n_images: int | None = None) -> list[Hashable]:
    """Turn labels (tensor, array, list) into a list of Python ints or strs.

    Plain Python values matter: numpy and torch scalars hash and compare like
    ints but do not serialise to JSON, and the class registry is saved as
    JSON. Mixing ints and strings is refused because ``3`` and ``"3"`` would
    silently become two classes.
    """
    if labels is None:
        raise LabelError("labels are missing: pass one label per image")
    if isinstance(labels, (str, bytes)):
        raise LabelError(f"labels must be a sequence with one label per image, got the string {labels!r}")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise LabelError(
                f"labels must be one-dimensional (one per image), got shape {labels.shape}"
            )
        kind = labels.dtype.kind
        if kind in _NUMPY_INT_KINDS:
            out: list[Hashable] = [int(v) for v in labels.tolist()]
        elif kind == "U":
            out = [str(v) for v in labels.tolist()]
        elif kind in "fSOb":
            out = [_one_label(v, i) for i, v in enumerate(labels.tolist())]
        else:
            raise LabelError(f"labels must be integers or strings, got dtype {labels.dtype}")
    else:
        try:
            items = list(labels)
        except TypeError:
            raise LabelError(
                f"labels must be a sequence with one label per image, got {type(labels).__name__}"
            ) from None
        out = [_one_label(v, i) for i, v in enumerate(items)]
    if n_images is not None and len(out) != n_images:
        raise DatasetError(
            f"image and label counts differ: {n_images} images, {len(out)} labels"
        )
    kinds = {type(v) for v in out}
    if len(kinds) > 1:
        first_int = next(v for v in out if isinstance(v, int))
        first_str = next(v for v in out if isinstance(v, str))
        raise LabelError(
            f"labels mix ints and strings (e.g. {first_int!r} and {first_str!r}); use one kind"
        )
    return out


def _sample_to_chw(image: Any, index: int) -> torch.Tensor:
    """One Dataset sample -> CHW tensor, keeping its dtype (validated later as a batch)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            grey = image.mode in ("1", "I", "I;16", "F", "LA")
            image = image.convert("L" if grey else "RGB")
        # PIL is always HWC: no guessing, which would misread a 3-pixel-high image.
        arr = np.asarray(image)
        if arr.ndim == 2:
            return torch.from_numpy(arr.copy()).unsqueeze(0)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0)))
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and _is_channel_last(image.shape, 0):
            image = np.moveaxis(image, -1, 0)
        if image.dtype.kind not in "fiu":
            raise ImageSpecError(
                f"sample {index}: images must have a numeric dtype, got numpy dtype {image.dtype}"
            )
        t = _numpy_images_to_tensor(image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and _is_channel_last(t.shape, 0):
            t = t.permute(2, 0, 1)
    else:
        raise DatasetError(
            f"sample {index}: the image is a {type(image).__name__}; expected a CHW tensor, "
            "a PIL image or an HWC numpy array"
        )
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ImageSpecError(
            f"sample {index}: an image must have shape (C, H, W), (H, W, C) or (H, W), "
            f"got shape {tuple(t.shape)}"
        )
    return t


def _dataset_class_names(dataset: Any) -> dict[Hashable, str]:
    """Names from torchvision's conventions: ``class_to_idx`` (name -> index) or ``classes`` (index -> name).

    Looks through ``Subset``/``DataLoader`` wrappers (their ``.dataset``).
    Anything that is not a plain list of strings or a str -> int mapping is
    ignored: names are a convenience, never a reason to refuse data.
    """
    seen: set[int] = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        c2i = getattr(dataset, "class_to_idx", None)
        if isinstance(c2i, Mapping) and c2i and all(
            isinstance(k, str) and isinstance(v, (int, np.integer)) and not isinstance(v, bool) for k, v in c2i.items()
        ):
            return {int(v): str(k) for k, v in c2i.items()}
        classes = getattr(dataset, "classes", None)
        if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
            return {i: c for i, c in enumerate(classes)}
        dataset = getattr(dataset, "dataset", None)
    return {}


def _from_loader(loader: Any) -> LabeledImages:
    """Iterate a DataLoader (or any iterable of (images, labels) batches) exactly once and concatenate."""
    images: list[torch.Tensor] = []
    raw_labels: list[Any] = []
    for b, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DatasetError(
                f"batch {b} of the {type(loader).__name__} is a {type(batch).__name__}; "
                "expected (images, labels) batches (the default collate of a Dataset of (image, label))"
            )
        x, y = batch[0], batch[1]
        if isinstance(x, (list, tuple)):  # a batch left as a list of samples (custom collate)
            x = torch.stack([_sample_to_chw(s, len(raw_labels) + i) for i, s in enumerate(x)])
        t = images_to_tensor(x)
        if images and (t.shape[1:] != images[0].shape[1:] or t.dtype != images[0].dtype):
            raise ImageSpecError(
                f"batch {b} has images of shape {tuple(t.shape[1:])} and dtype {t.dtype} but batch 0 has "
                f"{tuple(images[0].shape[1:])} and {images[0].dtype}; all images must share one size and dtype"
            )
        ys = labels_to_list(y, int(t.shape[0]))
        images.append(t)
        raw_labels.extend(ys)
    if not images:
        raise DatasetError(f"the {type(loader).__name__} yielded no batches: 0 images")
    stacked = torch.cat(images)
    return LabeledImages(stacked, labels_to_list(raw_labels, int(stacked.shape[0])))


def _with_names(data: LabeledImages, names: dict[Hashable, str]) -> LabeledImages:
    present = set(data.labels)
    keep = {k: v for k, v in names.items() if k in present}
    return LabeledImages(data.images, data.labels, {**keep, **data.class_names}) if keep else data


def _from_dataset(dataset: Any) -> LabeledImages:
    """Stack a map-style dataset; one pass, so transforms run once per sample."""
    try:
        n = len(dataset)
    except TypeError:
        raise DatasetError(f"{type(dataset).__name__} has no length; pass a map-style dataset") from None
    if n == 0:
        raise DatasetError(f"the dataset is empty: {type(dataset).__name__} has 0 samples")
    images: list[torch.Tensor] = []
    raw_labels: list[Any] = []
    for i in range(n):
        sample = dataset[i]
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise DatasetError(
                f"sample {i} of {type(dataset).__name__} is a {type(sample).__name__}; "
                "expected an (image, label) pair"
            )
        t = _sample_to_chw(sample[0], i)
        if images:
            ref = images[0]
            if t.shape != ref.shape:
                raise ImageSpecError(
                    f"sample {i} has shape {tuple(t.shape)} but sample 0 has {tuple(ref.shape)}; "
                    "all images must share one size (resize them in the dataset's transform)"
                )
            if t.dtype != ref.dtype:
                raise ImageSpecError(
                    f"sample {i} has dtype {t.dtype} but sample 0 has {ref.dtype}; "
                    "all images must share one dtype"
                )
        images.append(t)
        raw_labels.append(sample[1])
    stacked = images_to_tensor(torch.stack([torch.as_tensor(t) for t in images]))
    return LabeledImages(stacked, labels_to_list(raw_labels, n))


def _from_path(path: Path) -> LabeledImages:
    # Imported here: npz.py uses this module's helpers, so a top-level import
    # of the loaders would be circular.
    from .cifar import is_cifar_python_dir, load_cifar_python
    from .folder import load_image_folder
    from .npz import load_npz

    if path.is_dir():
        if is_cifar_python_dir(path):
            return load_cifar_python(path, train=True)
        return load_image_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_npz(path)
        raise DatasetError(
            f"cannot load {str(path)!r}: expected a directory (image folder or CIFAR python) "
            "or a .npz file"
        )
    raise DatasetError(f"dataset path {str(path)!r} does not exist")


def _revalidate(data: LabeledImages) -> LabeledImages:
    images = images_to_tensor(data.images)
    labels = labels_to_list(data.labels, int(images.shape[0]))
    return LabeledImages(images, labels, dict(data.class_names))


def _is_loader(data: Any) -> bool:
    """A torch DataLoader, or an iterable without random access (a generator of batches)."""
    if isinstance(data, torch.utils.data.DataLoader):
        return True
    return hasattr(data, "__iter__") and not hasattr(data, "__getitem__") and not isinstance(data, (str, bytes, Mapping))


def with_batch_axis(images: Any, shape: tuple[int, int, int]) -> Any:
    """For prediction: one image (CHW, HWC, HW for grey, or a PIL image) of the expected ``shape`` as a batch of one.

    Batches pass through unchanged, so predict takes uint8 NHWC, float NCHW
    in [0, 1] and single images alike.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(images, Image.Image):
        return _sample_to_chw(images, 0)[None]
    if not hasattr(images, "shape"):
        return images
    c, h, w = shape
    got = tuple(images.shape)
    if got in ((c, h, w), (h, w, c)) or (c == 1 and got == (h, w)):
        return images[None]
    return images


def _check_batch_axis(images: Any, labels: Any) -> None:
    """Name a missing batch axis: one (H, W, C) or (C, H, W) image with one label reads as H images otherwise."""
    shape = tuple(images.shape)
    try:
        n_labels = len(labels)
    except TypeError:
        n_labels = 1  # a scalar label: one image
    if len(shape) == 3 and n_labels == 1 and shape[0] != 1 and (shape[-1] in (1, 3) or shape[0] in (1, 3)):
        raise ImageSpecError(
            f"images have shape {shape} and there is 1 label: that is one image without a batch axis "
            f"(read as {shape[0]} images); pass a batch, e.g. images[None] (shape {(1, *shape)}) with [label]"
        )


def as_labeled_images(data: Any, labels: Any = None) -> LabeledImages:
    """Convert any supported dataset form into validated :class:`LabeledImages`.

    Accepted forms: a ``LabeledImages``; ``(images, labels)`` as a tuple or
    as two arguments, with images a numpy array or torch tensor; a mapping
    with ``images`` and ``labels`` (e.g. an opened ``np.load`` file); a
    map-style dataset whose items are ``(image, label)``; or a path to an
    image folder, a CIFAR python directory or a ``.npz`` file; a torch
    ``DataLoader`` (or any iterable of ``(images, labels)`` batches), iterated
    once. A dataset's ``class_to_idx`` / ``classes`` (torchvision's
    ImageFolder, CIFAR10, ...) name its integer labels. Directory and
    ``.npz`` paths load the training split; call the loaders directly for
    the test split. The caller's arrays are never modified.
    """
    if isinstance(data, LabeledImages):
        if labels is not None:
            raise DatasetError("labels were passed together with a LabeledImages that already has labels")
        return _revalidate(data)
    if isinstance(data, (str, os.PathLike)):
        if labels is not None:
            raise DatasetError(f"labels cannot be passed with a path ({str(data)!r}); the files carry them")
        return _revalidate(_from_path(Path(data)))
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if labels is None:
            raise LabelError("labels are missing: pass as_labeled_images(images, labels)")
        _check_batch_axis(data, labels)
        images = images_to_tensor(data)
        return LabeledImages(images, labels_to_list(labels, int(images.shape[0])))
    if labels is None and isinstance(data, tuple) and len(data) == 2 and isinstance(
        data[0], (np.ndarray, torch.Tensor)
    ):
        return as_labeled_images(data[0], data[1])
    if isinstance(data, Mapping):
        keys = set(data.keys())
        if {"images", "labels"} <= keys and labels is None:
            return as_labeled_images(data["images"], data["labels"])
        raise DatasetError(
            f"a mapping must have 'images' and 'labels' keys, got keys {sorted(map(str, keys))}"
        )
    if labels is not None:
        raise DatasetError(
            f"labels were passed separately but data is a {type(data).__name__}; "
            "separate labels go only with an image array or tensor"
        )
    if _is_loader(data):
        return _with_names(_from_loader(data), _dataset_class_names(data))
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _with_names(_from_dataset(data), _dataset_class_names(data))
    raise DatasetError(
        f"cannot use a {type(data).__name__} as a dataset; pass LabeledImages, (images, labels), "
        "a map-style Dataset of (image, label), or a path"
    )
