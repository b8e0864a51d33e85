"""Loader for an ImageFolder tree: ``root/CLASS/*.png`` (or jpg, jpeg, bmp, webp).

The class folder's name is the label, so labels are strings and stay the
user's own words in predictions. Files are read in sorted order so that the
same tree always yields the same dataset (and the same training run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError, ImageSpecError
from .images import LabeledImages

__all__ = ["load_image_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

# PIL modes that carry a single intensity channel.
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _class_files(class_dir: Path) -> list[Path]:
    files = [
        p
        for p in class_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: p.relative_to(class_dir).as_posix())


def _to_array(path: Path, channels: int | None, size: int | None) -> np.ndarray:
    """Decode one file to HWC uint8 with 1 or 3 channels (1 only for grey sources)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            grey = img.mode in _GREY_MODES
            want = channels if channels is not None else (1 if grey else 3)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F") and want == 1:
                # Wide grey: scale to 0..255 from the format's range instead of clipping.
                arr = np.asarray(img, dtype=np.float64)
                top = 1.0 if img.mode == "F" else 65535.0
                img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            converted = img.convert("L" if want == 1 else "RGB")
            if size is not None and converted.size != (size, size):
                converted = converted.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(converted)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageSpecError(f"cannot decode image {str(path)!r}: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image_folder(
    root: str | Path, *, size: int | None = None, channels: int | None = None
) -> LabeledImages:
    """Load every image under ``root/CLASS/`` as uint8 (N, C, H, W).

    All images must share one size unless ``size`` is given, in which case
    each is resized to ``size`` x ``size``; silently resizing by default
    would hide a mixed-up folder. Images stay 1-channel only if all are
    grey (otherwise grey ones are expanded to RGB); ``channels`` (1 or 3)
    forces one or the other.
    """
    root = Path(root)
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ConfigError(f"size must be a positive int or None, got {size!r}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
    if not root.is_dir():
        raise DatasetError(f"image folder {str(root)!r} is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"image folder {str(root)!r} has no class subdirectories; expected root/CLASS/image files"
        )

    arrays: list[np.ndarray] = []
    labels: list[str] = []
    sources: list[Path] = []
    for class_dir in class_dirs:
        files = _class_files(class_dir)
        if not files:
            raise DatasetError(
                f"class folder {str(class_dir)!r} holds no images with extensions "
                f"{sorted(IMAGE_EXTENSIONS)}; remove it or add images"
            )
        for path in files:
            arr = _to_array(path, channels, size)
            if arrays and arr.shape[:2] != arrays[0].shape[:2]:
                h0, w0 = arrays[0].shape[:2]
                h, w = arr.shape[:2]
                raise ImageSpecError(
                    f"{str(path)!r} is {w}x{h} but {str(sources[0])!r} is {w0}x{h0} (width x height); "
                    "all images must share one size, or pass size= to resize them"
                )
            arrays.append(arr)
            labels.append(class_dir.name)
            sources.append(path)

    if channels is None and any(a.shape[2] == 3 for a in arrays):
        # Same result as PIL's L -> RGB conversion, without decoding again.
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    stacked = np.stack(arrays).transpose(0, 3, 1, 2)
    images = torch.from_numpy(np.ascontiguousarray(stacked))
    names = {d.name: d.name for d in class_dirs}
    return LabeledImages(images, labels, names)
