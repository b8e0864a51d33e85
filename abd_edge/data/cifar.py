"""Loader for the "CIFAR-10/100 python version" directories users download.

Those files are Python pickles, and ``pickle.load`` on a file from the
internet runs whatever code the file names. The format itself only needs
dicts, lists, ints, bytes and numpy arrays, so we unpickle with an
allow-list of the few globals that rebuild a numpy array and refuse any
other global before it is called: a tampered file fails with
:class:`UnsafePickleError` instead of executing anything.

Layouts::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta
"""

from __future__ import annotations

import _codecs
import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from .images import LabeledImages

__all__ = ["UnsafePickleError", "load_cifar_python", "is_cifar_python_dir", "find_cifar_python_dir"]

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = (*_CIFAR10_TRAIN, "test_batch", "batches.meta")
_CIFAR100_FILES = ("train", "test", "meta")
_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE


class UnsafePickleError(DatasetError):
    """A pickle names a global outside the allow-list; it was not executed."""


def _numpy_reconstruct() -> Callable[..., Any]:
    # numpy 2 moved the module to numpy._core; importing numpy.core there
    # only emits a DeprecationWarning, so resolve the real object directly.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` restricted to latin-1.

    Protocol-2 pickles written by Python 3 store every bytes object as
    ``_codecs.encode(text, 'latin1')``. Other codecs are never needed, so
    they are refused rather than trusted.
    """
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in (
        "latin1",
        "latin-1",
        "iso-8859-1",
    ):
        raise UnsafePickleError(
            f"refusing _codecs.encode with encoding {encoding!r}; CIFAR pickles only use latin1"
        )
    return _codecs.encode(text, "latin1", errors)


def _safe_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` that refuses object dtypes: CIFAR arrays are plain uint8."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError(f"refusing numpy object dtype {dt!r} in a CIFAR pickle")
    return dt


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only hands out allow-listed objects."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {str(self._source)!r}: it references {module}.{name}, "
                "but a CIFAR pickle may only contain numpy arrays, lists, ints and bytes; "
                "the file is not a CIFAR batch or has been tampered with"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"refusing to load {str(self._source)!r}: it uses persistent ids, which CIFAR pickles never do"
        )


def _read_pickle(path: Path) -> dict[str, Any]:
    """Unpickle one CIFAR file safely and return its dict with str keys."""
    if not path.is_file():
        raise DatasetError(f"CIFAR file {str(path)!r} is missing; expected it in the downloaded directory")
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(
            f"{str(path)!r} is not a readable CIFAR python pickle ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{str(path)!r} holds a {type(obj).__name__}; a CIFAR pickle holds a dict")
    # Files pickled by Python 2 load with bytes keys; ones re-saved by Python 3 have str keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _decode_name(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    return str(value)


def _variant(directory: Path) -> str | None:
    if (directory / "batches.meta").is_file() or (directory / "data_batch_1").is_file():
        return "cifar10"
    if (directory / "meta").is_file() and (
        (directory / "train").is_file() or (directory / "test").is_file()
    ):
        return "cifar100"
    return None


def is_cifar_python_dir(path: str | Path) -> bool:
    """Whether ``path`` (or its standard subdirectory) looks like a CIFAR python download."""
    try:
        find_cifar_python_dir(path)
    except DatasetError:
        return False
    return True


def find_cifar_python_dir(root: str | Path) -> tuple[Path, str]:
    """Locate the batches directory under ``root`` and tell which variant it is.

    Users point at either the extracted folder or the folder they extracted
    into, so both are accepted. Returns ``(directory, "cifar10" | "cifar100")``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CIFAR root {str(root)!r} is not a directory")
    found = _variant(root)
    if found is not None:
        return root, found
    candidates = [
        (root / sub, kind)
        for sub in (_CIFAR10_DIR, _CIFAR100_DIR)
        if (root / sub).is_dir() and (kind := _variant(root / sub)) is not None
    ]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise DatasetError(
            f"{str(root)!r} holds both {_CIFAR10_DIR!r} and {_CIFAR100_DIR!r}; pass the one you want"
        )
    raise DatasetError(
        f"no CIFAR python data under {str(root)!r}: expected {_CIFAR10_DIR}/ "
        f"({', '.join(_CIFAR10_FILES)}) or {_CIFAR100_DIR}/ ({', '.join(_CIFAR100_FILES)}), "
        "either as this directory or inside it"
    )


def _batch_arrays(batch: dict[str, Any], label_key: str, path: Path) -> tuple[np.ndarray, list[int]]:
    if "data" not in batch or label_key not in batch:
        raise DatasetError(
            f"{str(path)!r} lacks key {'data' if 'data' not in batch else label_key!r}; "
            f"found keys {sorted(batch)}"
        )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{str(path)!r}: 'data' is {desc}; expected uint8 of shape (N, {_PIXELS})")
    raw = batch[label_key]
    try:
        labels = [int(v) for v in raw]
    except (TypeError, ValueError):
        raise DatasetError(f"{str(path)!r}: {label_key!r} must be a list of ints") from None
    if len(labels) != data.shape[0]:
        raise DatasetError(
            f"{str(path)!r}: {data.shape[0]} images but {len(labels)} entries in {label_key!r}"
        )
    return data, labels


def load_cifar_python(root: str | Path, *, train: bool, label_kind: str = "fine") -> LabeledImages:
    """Load a CIFAR-10 or CIFAR-100 python-version split as uint8 (N, 3, 32, 32).

    ``root`` is the batches directory or its parent; the variant is detected
    from the files present. ``label_kind`` picks CIFAR-100's 100 fine or 20
    coarse classes (CIFAR-10 has only ``"fine"``). Labels are ints and
    ``class_names`` maps each to its name from the meta file.
    """
    if label_kind not in ("fine", "coarse"):
        raise ConfigError(f"label_kind must be 'fine' or 'coarse', got {label_kind!r}")
    directory, variant = find_cifar_python_dir(root)
    if variant == "cifar10":
        if label_kind != "fine":
            raise ConfigError(
                f"label_kind={label_kind!r} needs CIFAR-100; {str(directory)!r} is CIFAR-10, "
                "which has only fine labels"
            )
        files = _CIFAR10_TRAIN if train else ("test_batch",)
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files = ("train",) if train else ("test",)
        meta_file = "meta"
        label_key, names_key = f"{label_kind}_labels", f"{label_kind}_label_names"

    meta = _read_pickle(directory / meta_file)
    if names_key not in meta:
        raise DatasetError(
            f"{str(directory / meta_file)!r} lacks {names_key!r}; found keys {sorted(meta)}"
        )
    names = [_decode_name(v) for v in meta[names_key]]

    chunks: list[np.ndarray] = []
    labels: list[int] = []
    for name in files:
        path = directory / name
        data, batch_labels = _batch_arrays(_read_pickle(path), label_key, path)
        bad = next((v for v in batch_labels if not 0 <= v < len(names)), None)
        if bad is not None:
            raise DatasetError(
                f"{str(path)!r}: label {bad} is outside 0..{len(names) - 1} "
                f"({len(names)} names in {meta_file})"
            )
        chunks.append(data)
        labels.extend(batch_labels)
    flat = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    if flat.shape[0] == 0:
        raise DatasetError(f"{str(directory)!r}: the {'train' if train else 'test'} split has 0 images")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane
    # row-major: a plain reshape yields (C, H, W) without any transpose.
    images = torch.from_numpy(np.ascontiguousarray(flat.reshape(-1, 3, _SIDE, _SIDE)))
    return LabeledImages(images, labels, {i: n for i, n in enumerate(names)})
