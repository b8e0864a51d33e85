"""Class orders and task splits for class-incremental benchmarks.

Published class-incremental results depend on which classes come first, so
the order must be reproducible from a seed and match the reference code's
convention exactly (``random.Random(seed).shuffle``), or numbers are not
comparable with theirs.
"""

from __future__ import annotations

import random
from typing import Hashable, Sequence

from ..errors import ConfigError
from .images import LabeledImages

__all__ = ["class_order", "split_tasks", "task_datasets"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def class_order(n_classes: int, seed: int | None) -> list[int]:
    """The order classes arrive in: a seeded shuffle of ``0..n_classes-1``.

    ``seed=None`` keeps the natural order (useful when the data is already
    in the wanted order). Python's ``random`` is used on purpose, not numpy:
    that is the reference implementation's convention, so a given seed
    yields the same order there and here.
    """
    if not _is_int(n_classes) or n_classes < 1:
        raise ConfigError(f"n_classes must be a positive int, got {n_classes!r}")
    order = list(range(n_classes))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def split_tasks(
    order: Sequence[int], n_tasks: int | None = None, sizes: Sequence[int] | None = None
) -> list[list[int]]:
    """Cut a class order into consecutive tasks.

    Give either ``n_tasks`` (equal tasks; the class count must divide
    evenly, since silently uneven tasks would skew per-task accuracy) or
    ``sizes`` (e.g. ``[50, 10, 10, 10, 10, 10]`` for a large first task).
    """
    order = list(order)
    if not order:
        raise ConfigError("the class order is empty; there is nothing to split into tasks")
    if len(set(order)) != len(order):
        dup = next(c for i, c in enumerate(order) if c in order[:i])
        raise ConfigError(f"class {dup!r} appears more than once in the class order")
    if (n_tasks is None) == (sizes is None):
        raise ConfigError("give exactly one of n_tasks or sizes")
    if n_tasks is not None:
        if not _is_int(n_tasks) or n_tasks < 1:
            raise ConfigError(f"n_tasks must be a positive int, got {n_tasks!r}")
        if len(order) % n_tasks:
            raise ConfigError(
                f"{len(order)} classes cannot be split into {n_tasks} equal tasks; "
                "choose a divisor or pass sizes="
            )
        sizes = [len(order) // n_tasks] * n_tasks
    sizes = list(sizes)  # type: ignore[arg-type]  # exactly one of the two is set
    if not sizes:
        raise ConfigError("sizes is empty; give at least one task size")
    bad = next((s for s in sizes if not _is_int(s) or s <= 0), None)
    if bad is not None:
        raise ConfigError(f"task sizes must be positive ints, got {bad!r} in {sizes}")
    if sum(sizes) != len(order):
        raise ConfigError(f"task sizes {sizes} sum to {sum(sizes)}, but the order has {len(order)} classes")
    tasks, start = [], 0
    for s in sizes:
        tasks.append(order[start : start + s])
        start += s
    return tasks


def task_datasets(data: LabeledImages, tasks: Sequence[Sequence[int]]) -> list[LabeledImages]:
    """One dataset per task, holding the images of that task's classes.

    Task entries are class *indices* into ``data.unique_labels()`` (the
    sorted distinct labels), so the same ``class_order``/``split_tasks``
    works for int labels (CIFAR: index == label) and for string labels (an
    image folder: index i is the i-th class name in sorted order). The
    returned datasets keep the user's original labels.
    """
    uniques: list[Hashable] = data.unique_labels()
    seen: set[int] = set()
    out = []
    for t, task in enumerate(tasks):
        keep = []
        for idx in task:
            if not _is_int(idx) or not 0 <= idx < len(uniques):
                raise ConfigError(
                    f"task {t} names class index {idx!r}, but the data has {len(uniques)} classes "
                    f"(valid indices 0..{len(uniques) - 1})"
                )
            if idx in seen:
                raise ConfigError(f"class index {idx} appears in more than one task (again in task {t})")
            seen.add(idx)
            keep.append(uniques[idx])
        if not keep:
            raise ConfigError(f"task {t} has no classes")
        out.append(data.select_labels(keep))
    return out
