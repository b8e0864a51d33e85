"""The single entry point that turns user data into :class:`LabeledImages`.

Every Learner call goes through :func:`as_labeled_images`, so this is the one
place where bad input is caught. Catching it here, with a message naming the
offending value, is much cheaper for the user than a shape error deep inside
a convolution or a silently wrong accuracy caused by 0..255 floats.

Arrays and tensors go through :mod:`.arrays` (shared with the file
loaders); this module adds datasets, loaders, mappings and paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch

from ..errors import DatasetError, ImageSpecError, LabelError
from .arrays import images_to_tensor, labels_to_list, sample_to_chw
from .cifar import is_cifar_python_dir, load_cifar_python
from .folder import load_image_folder
from .images import LabeledImages
from .npz import load_npz

__all__ = ["as_labeled_images"]

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
            x = torch.stack([sample_to_chw(s, len(raw_labels) + i) for i, s in enumerate(x)])
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
        t = sample_to_chw(sample[0], i)
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
