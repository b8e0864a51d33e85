"""Progress bars that switch themselves off when nobody is watching."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """True when someone is watching: stderr is a terminal, or this runs in a Jupyter kernel.

    ``ABD_EDGE_PROGRESS=0`` (or 1) overrides. In a notebook stderr is not a
    TTY, but tqdm.auto draws a widget there, so the bars stay on.
    """
    flag = os.environ.get("ABD_EDGE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress(it: Iterable[T], *, desc: str, enabled: bool = True, total: int | None = None, leave: bool = False) -> "tqdm[T]":
    return tqdm(it, desc=desc, total=total, disable=not (enabled and interactive()), leave=leave, dynamic_ncols=True)
