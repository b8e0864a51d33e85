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

    def __init__(self, fn: Callable[..., Any], backend: str, mode: str | None = None) -> None:
        self.fn = fn
        self.backend = backend
        self.mode = mode
        self.failure: str | None = None
        self.compiled: Callable[..., Any] | None = None
        _allow_recompiles()
        try:
            self.compiled = torch.compile(fn, backend=backend, mode=mode)
        except Exception as exc:  # noqa: BLE001 - an unknown backend, no dynamo on this platform, ...
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        log.warning("torch.compile (backend %r, mode %r) failed, training eagerly instead: %s", self.backend, self.mode,
                    self.failure)
        self.compiled = None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                self._give_up(exc)
        return self.fn(*args)


def _allow_recompiles(limit: int = 64) -> None:
    """Raise dynamo's per-function recompile limit (8 by default).

    Every task trains a new copy of the model, the last batch of an epoch
    has its own size, replay doubles the batch and evaluation runs without
    gradients: a 5-task run can compile the same function more than 8 times,
    after which dynamo silently runs it eagerly.
    """
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; older names still alias
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def maybe_compiled(fn: Callable[..., Any], backend: str | None, mode: str | None = None) -> Callable[..., Any]:
    """``fn`` itself when ``backend`` is None (the eager path, unchanged), else a :class:`CompiledForward`."""
    return fn if backend is None else CompiledForward(fn, backend, mode)


#: torch.compile modes that replay CUDA graphs (whose outputs the next replay overwrites)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def mark_step(backend: str | None, mode: str | None) -> None:
    """Tell the CUDA-graph runtime that a new training step begins (outputs of the last one are no longer read).

    Without it, CUDA graph trees guess step boundaries and may refuse to
    replay a graph whose previous outputs still look alive.
    """
    if backend is not None and mode in CUDA_GRAPH_MODES and torch.cuda.is_available():
        torch.compiler.cudagraph_mark_step_begin()
