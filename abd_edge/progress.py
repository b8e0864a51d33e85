"""Progress bars that switch themselves off when nobody is watching."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """True when stderr is a terminal and ABD_EDGE_PROGRESS is not 0."""
    flag = os.environ.get("ABD_EDGE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(it: Iterable[T], *, desc: str, enabled: bool = True, total: int | None = None, leave: bool = False) -> "tqdm[T]":
    return tqdm(it, desc=desc, total=total, disable=not (enabled and interactive()), leave=leave, dynamic_ncols=True)
