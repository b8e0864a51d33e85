"""Loader for the benchmark's CIFAR-10-as-JPEG ``.npz`` file.

The file keeps each split as the concatenated original JPEG bytes plus
offsets (keys ``train_jpeg``, ``train_offsets``, ``train_labels``, the same
for ``test`` and ``class_names``), which is a third of the raw pixel size.
Decoding 50,000 images costs seconds, and benchmarks load the same split
many times, so decoded splits are cached in memory keyed by the file's
resolved path, modification time and size: editing or replacing the file
invalidates the entry.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError, ImageSpecError
from .images import LabeledImages

__all__ = ["load_cifar10_jpeg", "is_cifar10_jpeg_file", "clear_cache", "JPEG_NPZ_KEYS"]

JPEG_NPZ_KEYS = frozenset(
    {
        "train_jpeg",
        "train_offsets",
        "train_labels",
        "test_jpeg",
        "test_offsets",
        "test_labels",
        "class_names",
    }
)

# Two files x two splits: enough for a benchmark run without letting a long
# session that touches many files hold gigabytes.
_CACHE_LIMIT = 4
_CacheKey = tuple[str, int, int, str]
_CacheValue = tuple[torch.Tensor, tuple[int, ...], tuple[str, ...]]
_CACHE: "OrderedDict[_CacheKey, _CacheValue]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Drop every decoded split (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def is_cifar10_jpeg_file(keys: set[str] | frozenset[str]) -> bool:
    """Whether an npz with these keys is in the CIFAR-10 JPEG format."""
    return {"train_jpeg", "train_offsets", "test_jpeg", "test_offsets"} <= set(keys)


def _decode_torchvision(chunks: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Batched decode; ``None`` when torchvision cannot decode here (use PIL)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # torchvision absent or its image extension failed to load
        return None
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of torchcodec;
            # until they are removed they are the fastest batched decoder we
            # have, and the PIL path takes over once they are gone.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
            return list(decode_jpeg(chunks, mode=ImageReadMode.RGB))
    except (RuntimeError, TypeError, ValueError):
        return None


def _decode_pil(chunks: list[torch.Tensor], path: Path, split: str) -> list[torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    out = []
    for i, chunk in enumerate(chunks):
        try:
            with Image.open(io.BytesIO(chunk.numpy().tobytes())) as img:
                arr = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageSpecError(f"{str(path)!r}: {split} image {i} is not a valid JPEG ({exc})") from None
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return out


def _split_chunks(jpeg: np.ndarray, offsets: np.ndarray, path: Path, split: str) -> list[torch.Tensor]:
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
        raise DatasetError(f"{str(path)!r}: {split}_jpeg is {jpeg.dtype} {jpeg.shape}; expected 1-D uint8")
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 2:
        raise DatasetError(
            f"{str(path)!r}: {split}_offsets is {offsets.dtype} {offsets.shape}; "
            "expected 1-D ints of shape (N+1,) with N >= 1 images"
        )
    if offsets[0] != 0 or offsets[-1] != len(jpeg) or np.any(np.diff(offsets) <= 0):
        raise DatasetError(
            f"{str(path)!r}: {split}_offsets must rise strictly from 0 to {len(jpeg)} "
            f"(the length of {split}_jpeg), got {int(offsets[0])}..{int(offsets[-1])}"
        )
    source = torch.from_numpy(jpeg)
    bounds = offsets.tolist()
    # Slices are views into one buffer: no copy of the 46 MB of JPEG bytes.
    return [source[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _decode_split(path: Path, split: str) -> _CacheValue:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {str(path)!r} as an .npz file ({exc})") from None
    with archive:
        missing = sorted(JPEG_NPZ_KEYS - set(archive.files))
        if missing:
            raise DatasetError(
                f"{str(path)!r} is not a CIFAR-10 JPEG npz: missing keys {missing} "
                f"(expected {sorted(JPEG_NPZ_KEYS)})"
            )
        jpeg = archive[f"{split}_jpeg"]
        offsets = archive[f"{split}_offsets"]
        labels = archive[f"{split}_labels"]
        names = archive["class_names"]
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise DatasetError(f"{str(path)!r}: class_names is {names.dtype} {names.shape}; expected 1-D strings")
    name_list = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist())
    chunks = _split_chunks(jpeg, offsets, path, split)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(chunks):
        raise DatasetError(
            f"{str(path)!r}: {split}_labels is {labels.dtype} {labels.shape}; "
            f"expected {len(chunks)} integer labels, one per image"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(name_list)):
        raise DatasetError(
            f"{str(path)!r}: {split}_labels range {int(labels.min())}..{int(labels.max())} "
            f"does not fit the {len(name_list)} class names"
        )
    decoded = _decode_torchvision(chunks)
    if decoded is None:
        decoded = _decode_pil(chunks, path, split)
    first = decoded[0].shape
    for i, img in enumerate(decoded):
        if img.shape != first:
            raise ImageSpecError(
                f"{str(path)!r}: {split} image {i} decodes to {tuple(img.shape)}, "
                f"image 0 to {tuple(first)}; all images must share one size"
            )
    images = torch.stack(decoded)
    return images, tuple(int(v) for v in labels.tolist()), name_list


def load_cifar10_jpeg(path: str | Path, *, train: bool) -> LabeledImages:
    """Load one split of the CIFAR-10 JPEG npz as uint8 (N, 3, 32, 32).

    Repeated calls for the same unchanged file return the cached images
    without decoding again. The images tensor is shared between those calls
    (a copy would double CIFAR-10's 150 MB), so treat it as read-only.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"CIFAR-10 JPEG file {str(p)!r} does not exist; expected an .npz file")
    resolved = p.resolve()
    split = "train" if train else "test"
    st = resolved.stat()
    # Size as well as mtime: a file rewritten within the clock's resolution still differs.
    key = (str(resolved), st.st_mtime_ns, st.st_size, split)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
    if hit is None:
        hit = _decode_split(resolved, split)
        with _CACHE_LOCK:
            # Entries of an older version of the same file are dead weight now.
            for stale in [k for k in _CACHE if k[0] == key[0] and k[1:3] != key[1:3]]:
                del _CACHE[stale]
            _CACHE[key] = hit
            while len(_CACHE) > _CACHE_LIMIT:
                _CACHE.popitem(last=False)
    images, labels, names = hit
    return LabeledImages(images, list(labels), {i: n for i, n in enumerate(names)})
