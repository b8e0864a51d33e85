"""Arrays and tensors of images and labels -> validated tensors and label lists.

The rules every input obeys, whatever it arrives in: images as NCHW (HWC and
NHWC are recognised), uint8 or floats in [0, 1], labels as ints or strings of
one kind. The dataset adapter (``adapters.py``) and the file loaders
(``npz.py``, ...) both convert through :func:`images_to_tensor` and
:func:`labels_to_list`, so a file and an in-memory array are held to exactly
the same rules.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ..errors import DatasetError, ImageSpecError, LabelError

__all__ = ["images_to_tensor", "labels_to_list", "sample_to_chw", "with_batch_axis"]

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


def sample_to_chw(image: Any, index: int) -> torch.Tensor:
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
        return sample_to_chw(images, 0)[None]
    if not hasattr(images, "shape"):
        return images
    c, h, w = shape
    got = tuple(images.shape)
    if got in ((c, h, w), (h, w, c)) or (c == 1 and got == (h, w)):
        return images[None]
    return images
