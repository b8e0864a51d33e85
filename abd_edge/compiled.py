"""The training forward pass through ``torch.compile``, with a clean fall-back to eager.

On a GPU a ResNet-32 step at batch 128 is a few hundred small kernels, and
their launch overhead, not arithmetic, bounds the images per second;
compilation fuses them. On a CPU the eager oneDNN kernels are already the
bulk of the time and compiling costs minutes of a device update, so the
learner's ``compile="auto"`` turns it on for CUDA only. Anything that goes
wrong while compiling (no C++ compiler or Triton, an unsupported op, a
backend error) is logged once and the call runs eagerly from then on: a
faster path must never be the reason an update fails.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


class CompiledForward:
    """Calls ``fn`` compiled with ``backend``; on the first failure, warns and calls ``fn`` itself from then on."""

    def __init__(self, fn: Callable[..., Any], backend: str) -> None:
        self.fn = fn
        self.backend = backend
        self.failure: str | None = None
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(fn, backend=backend)
        except Exception as exc:  # noqa: BLE001 - an unknown backend, no dynamo on this platform, ...
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        log.warning("torch.compile (backend %r) failed, training eagerly instead: %s", self.backend, self.failure)
        self.compiled = None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                self._give_up(exc)
        return self.fn(*args)


def maybe_compiled(fn: Callable[..., Any], backend: str | None) -> Callable[..., Any]:
    """``fn`` itself when ``backend`` is None (the eager path, unchanged), else a :class:`CompiledForward`."""
    return fn if backend is None else CompiledForward(fn, backend)
