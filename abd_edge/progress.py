"""Progress bars that switch themselves off when nobody is watching."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, TypeVar

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


class Stages:
    """A bar over the named stages of one long call (an export: ONNX export, parity, int8, commit).

    ``stage(name)`` marks the start of a stage (shown beside the bar and
    logged at INFO); leaving the ``with`` block completes the bar.
    """

    def __init__(self, names: list[str], *, desc: str, enabled: bool = True, log: Any = None) -> None:
        self._bar = tqdm(total=len(names), desc=desc, disable=not (enabled and interactive()), leave=False,
                         dynamic_ncols=True, unit="stage")
        self._log, self._desc, self._started = log, desc, False

    def stage(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(name)
        if self._log is not None:
            self._log.info("%s: %s", self._desc, name)

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started and exc[0] is None:
            self._bar.update(1)
        self._bar.close()
