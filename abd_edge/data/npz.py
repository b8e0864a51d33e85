"""Loader for a user's ``.npz`` with ``images`` and ``labels``.

Files are always opened with ``allow_pickle=False``: an object array in an
.npz is a pickle, and loading one from an untrusted file can run code.
Strings therefore must be stored as fixed-width text (``np.str_``), which
is what ``np.savez`` does for a list of Python strings anyway.

Keys:
    ``images``       (N, C, H, W), (N, H, W, C) or (N, H, W); uint8 or float in [0, 1]
    ``labels``       (N,) ints or strings
    ``class_names``  optional: names aligned with the sorted unique labels, or
    ``class_labels`` + ``class_names``: two aligned arrays, label -> name

A file in the CIFAR-10 JPEG benchmark format is recognised by its keys and
handed to :func:`load_cifar10_jpeg`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable

import numpy as np

from ..errors import ConfigError, DatasetError, LabelError
from .arrays import images_to_tensor, labels_to_list
from .images import LabeledImages
from .jpeg_npz import is_cifar10_jpeg_file, load_cifar10_jpeg

__all__ = ["load_npz"]


def _read(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:  # object arrays need allow_pickle, which we refuse
        raise DatasetError(
            f"{str(path)!r}: key {key!r} is stored as a pickled object array ({exc}); "
            "save strings as np.str_ arrays and numbers as numeric arrays"
        ) from None


def _names_list(values: np.ndarray, key: str, path: Path) -> list[str]:
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise LabelError(
            f"{str(path)!r}: {key!r} must be a 1-D array of strings, got {values.dtype} {values.shape}"
        )
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _class_names(
    archive: np.lib.npyio.NpzFile, labels: list[Hashable], path: Path
) -> dict[Hashable, str]:
    if "class_names" not in archive.files:
        return {}
    names = _names_list(_read(archive, "class_names", path), "class_names", path)
    if "class_labels" in archive.files:
        keys = labels_to_list(_read(archive, "class_labels", path))
        if len(keys) != len(names):
            raise LabelError(
                f"{str(path)!r}: class_labels has {len(keys)} entries but class_names has {len(names)}"
            )
        if keys and not set(keys) & set(labels):
            raise LabelError(
                f"{str(path)!r}: no value of class_labels (e.g. {keys[0]!r}) occurs in labels "
                f"(e.g. {labels[0]!r}); they must name the same classes"
            )
    else:
        keys = sorted(set(labels))  # type: ignore[type-var]
        if len(keys) != len(names):
            raise LabelError(
                f"{str(path)!r}: class_names has {len(names)} entries but the labels have "
                f"{len(keys)} distinct values; store class_labels too, or one name per sorted label"
            )
    return dict(zip(keys, names))


def load_npz(path: str | Path, *, split: str | None = None) -> LabeledImages:
    """Load images and labels from an ``.npz`` file, validated like in-memory arrays.

    ``split`` ('train' or 'test') applies only to the CIFAR-10 JPEG format,
    whose files hold both; for that format the default is the training
    split, so ``load_npz(path)`` equals ``load_cifar10_jpeg(path, train=True)``.
    """
    if split not in (None, "train", "test"):
        raise ConfigError(f"split must be 'train', 'test' or None, got {split!r}")
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"npz file {str(p)!r} does not exist")
    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {str(p)!r} as an .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{str(p)!r} is a single .npy array, not an .npz with 'images' and 'labels'")
    with archive:
        keys = set(archive.files)
        if is_cifar10_jpeg_file(keys):
            jpeg = True
        else:
            jpeg = False
            if split is not None:
                raise ConfigError(
                    f"split={split!r} applies only to the CIFAR-10 JPEG format; {str(p)!r} has keys "
                    f"{sorted(keys)}"
                )
            missing = [k for k in ("images", "labels") if k not in keys]
            if missing:
                raise DatasetError(
                    f"{str(p)!r} lacks {missing}; expected keys 'images' and 'labels' "
                    f"(optional 'class_names', 'class_labels'), found {sorted(keys)}"
                )
            images = images_to_tensor(_read(archive, "images", p))
            labels = labels_to_list(_read(archive, "labels", p), int(images.shape[0]))
            names = _class_names(archive, labels, p)
    if jpeg:
        return load_cifar10_jpeg(p, train=split != "test")
    return LabeledImages(images, labels, names)
