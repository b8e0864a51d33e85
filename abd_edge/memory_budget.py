"""How a device update fits a peak-memory budget: micro-batch sizes from the memory left.

Measured on a 2-core AMD EPYC (torch 2.14 CUDA build on the CPU, bf16
autocast, ResNet-32 and the paper's generator on 32x32 images, peak RSS
sampled every 3 ms per phase; docs/DEPLOYMENT.md): above what the process
holds when the update starts (~830 MiB there, with 10,000 local images loaded: the torch import alone is
~510 MiB, the first ``torch.optim`` optimizer imports ``torch._dynamo``,
~150 MiB more, then the learner and ONNX Runtime), a training step costs
about ``TRAIN_FIXED_MB`` plus ``TRAIN_MB_PER_ROW`` per row of one forward
pass (real and dreamed rows together), and dreaming about
``DREAM_FIXED_MB`` plus the replay pool's size (what training leaves allocated, and the generator's
8.2 M-weight first layer: its gradient, Adam moments, Adam's temporary and
bf16 copies of weight and gradient) plus ``DREAM_MB_PER_IMAGE`` per image
of one generator pass.
Activation costs scale with the pixel count. The plan takes the largest
micro-batches that fit; the report then says whether the measured peak did.
Dreaming is planned a second time when it starts
(:func:`dream_micro_batch_at_start`), from what the process holds then.
This module is torch-free: the runtime plans before it imports torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError, MemoryBudgetError

TRAIN_FIXED_MB = 60.0
TRAIN_MB_PER_ROW = 3.2
DREAM_FIXED_MB = 335.0
DREAM_MB_PER_IMAGE = 2.3
REFERENCE_PIXELS = 32 * 32
# Dreaming above what the process holds when dreaming starts, for the re-plan made there (torch 2.13 CPU-only
# build, 2 threads, fused Adam, bf16 autocast, the paper's 8.4 M-weight generator at 32x32, glibc malloc; peak
# RSS sampled every 3 ms over 8 iterations): 327 MiB at micro-batches of 16, 413 at 64, 674-701 at the whole
# 128. The line through 16 and 128: a part that grows with the generator (its gradient, Adam's two moments,
# the bf16 copies of weight and gradient: about 4x its fp32 size), one that does not (allocator and oneDNN
# buffers), and 3.35 MiB per image of one pass (above the slope between 16 and 64, 1.8).
DREAM_START_FIXED_MB = 145.0
DREAM_START_MB_PER_GENERATOR_MB = 4.0
DREAM_START_MB_PER_IMAGE = 3.35
MIN_MICRO_BATCH = 8  # below this a BatchNorm's batch statistics are mostly noise

__all__ = ["MemoryPlan", "check_max_memory_mb", "dream_micro_batch_at_start", "plan_memory", "pool_mb"]


def pool_mb(pool_images: int, channels: int, pixels: int, feature_dim: int = 64) -> float:
    """A replay pool's peak: float32 images, previous-model features and logits, twice (its batches and their concatenation
    while it is built), with 20% for allocator slack."""
    return 2.4 * pool_images * 4 * (channels * pixels + feature_dim + 16) / 2**20


def check_max_memory_mb(value: Any) -> None:
    """None (no cap) or a positive finite number of MiB."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"max_memory_mb must be None (no cap) or a positive number of MiB, got {value!r}")


@dataclass(frozen=True)
class MemoryPlan:
    """What a budget made of one update: micro-batch sizes (None: whole batches) and the numbers behind them."""

    max_memory_mb: float | None
    held_mb: float | None  # resident memory when the update planned (process baseline, learner loaded)
    train_micro_batch: int | None
    dream_micro_batch: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fit(headroom: float, fixed: float, per_item: float, full: int) -> int | None:
    """The largest micro-batch that fits ``headroom`` (None: the whole batch fits), 0 if not even the minimum."""
    fits = math.floor((headroom - fixed) / per_item) if headroom > fixed else 0
    if fits >= full:
        return None
    return fits if fits >= MIN_MICRO_BATCH else 0


def plan_memory(
    max_memory_mb: float | None, held_mb: float | None, *, train_rows: int, dream_batch: int, pixels: int,
    pool_mb: float = 0.0,
) -> MemoryPlan:
    """Micro-batches for one update that fit ``max_memory_mb`` on top of ``held_mb``.

    ``train_rows``: rows of one training forward pass (real + dreamed);
    ``dream_batch``: images of one dreaming iteration; ``pixels``: H * W;
    ``pool_mb``: the replay pool training holds throughout (:func:`pool_mb`).
    Raises MemoryBudgetError (naming the budget, what is held and the
    least the update needs) when even ``MIN_MICRO_BATCH`` cannot fit.
    """
    check_max_memory_mb(max_memory_mb)
    if max_memory_mb is None or held_mb is None:
        return MemoryPlan(max_memory_mb, held_mb, None, None)
    scale = pixels / REFERENCE_PIXELS
    headroom = max_memory_mb - held_mb
    train = _fit(headroom, TRAIN_FIXED_MB + pool_mb, TRAIN_MB_PER_ROW * scale, train_rows)
    # the pool is freed before dreaming, but the heap it fragmented is not all returned (measured)
    dream = _fit(headroom, DREAM_FIXED_MB + pool_mb, DREAM_MB_PER_IMAGE * scale, dream_batch)
    if train == 0 or dream == 0:
        need = held_mb + max(TRAIN_FIXED_MB + pool_mb + TRAIN_MB_PER_ROW * scale * MIN_MICRO_BATCH,
                             DREAM_FIXED_MB + pool_mb + DREAM_MB_PER_IMAGE * scale * MIN_MICRO_BATCH)
        raise MemoryBudgetError(
            f"max_memory_mb={max_memory_mb:g} cannot hold this update: the process already holds {held_mb:.0f} MiB "
            f"and micro-batches of {MIN_MICRO_BATCH} need about {need:.0f} MiB in all; raise max_memory_mb or "
            "free memory before the update (or lower replay_pool_batches: its pool counts too)"
        )
    return MemoryPlan(max_memory_mb, held_mb, train, dream)


def dream_micro_batch_at_start(max_memory_mb: float, held_mb: float, *, dream_batch: int, pixels: int,
                               generator_mb: float, planned: int | None) -> tuple[int | None, bool]:
    """Dreaming's micro-batch re-planned when dreaming starts, on top of ``held_mb`` (what the process holds then).

    Why again: the plan made before training (:func:`plan_memory`) counts
    dreaming from what the process held at the start, but training leaves
    the heap larger by an amount that depends on the torch build and the
    allocator (on the CPU-only build a 1,000 MiB cap planned that way peaked
    at 1,100 while dreaming). ``generator_mb``: the generator's float32
    weights in MiB. Returns ``(micro_batch, fits)``: the largest micro-batch
    that fits, never above ``planned`` (None: the whole batch); when not even
    ``MIN_MICRO_BATCH`` fits, that minimum and ``fits=False``: training is
    done by then, so dreaming goes on at the least memory it can and the
    update's report says whether the cap held.
    """
    check_max_memory_mb(max_memory_mb)
    fixed = DREAM_START_FIXED_MB + DREAM_START_MB_PER_GENERATOR_MB * generator_mb
    fits = _fit(max_memory_mb - held_mb, fixed, DREAM_START_MB_PER_IMAGE * pixels / REFERENCE_PIXELS, dream_batch)
    ok = fits != 0
    micro = fits if ok else MIN_MICRO_BATCH
    if planned is not None:
        micro = planned if micro is None else min(micro, planned)
    return micro, ok
