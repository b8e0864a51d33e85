"""Where and how a Learner computes: the torch device, the autocast precision, the thread count."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import torch

from .dreaming import AutocastSpec
from .errors import ConfigError


def resolve_device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available")
    return dev


def make_cuda_repeatable(deterministic: bool = True) -> None:
    """Ask cuDNN for deterministic kernels so that a seed fixes a CUDA run too (``deterministic=False``: the fastest).

    By default cuDNN may choose backward convolution kernels that add in a
    varying order; on cifar10-5x2 two CUDA runs of one configuration and seed
    then ended task 2 at 59% and 70%, which makes recipe comparisons noise.
    The setting is process-wide (cuDNN has no other): the last learner made wins.
    """
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_autocast(precision: str, device: torch.device) -> AutocastSpec | None:
    """bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AMX/AVX512-BF16); fp32 elsewhere.

    On CPUs without native bf16 (AVX2-only, e.g. AMD Zen 3) autocast emulates
    it and runs about 10x slower, so "auto" never picks it there.
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_bf16()
        if not native:
            return None
    return AutocastSpec(device.type, torch.bfloat16, True)


def config_threads(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Learner method on ``config.num_threads`` torch threads (when set), restoring the caller's count after.

    torch's thread count is process-wide, so it is set for the call only:
    an application that asked for 1 thread must not find 2 busy cores.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = self.config.num_threads
        before = torch.get_num_threads()
        if wanted is None or wanted == before:
            return method(self, *args, **kwargs)
        torch.set_num_threads(wanted)
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def compile_backend(cfg: Any, device: torch.device, setup: Any) -> str | None:
    """torch.compile backend for a call's training forward, or None for eager.

    auto: CUDA only. Never for a private or data-parallel update (Opacus's
    per-sample hooks and the synced BatchNorm's collectives would only break the graph).
    """
    wanted = device.type == "cuda" if cfg.compile == "auto" else bool(cfg.compile)
    return cfg.compile_backend if wanted and setup is None else None


def autocasts(precision: str, device: torch.device) -> tuple[AutocastSpec | None, AutocastSpec | None]:
    """Training/dreaming autocast, and the predictions' (fp32 unless bf16 was asked for by name).

    Predictions stay fp32 under "auto" so that the Learner agrees with the
    exported fp32 ONNX classifier a device serves.
    """
    train = resolve_autocast(precision, device)
    return train, (train if precision == "bf16" else None)
