"""Micro-batches: one optimizer step's batch run through forward/backward in slices, gradients accumulated.

Activation memory grows with the rows of one forward pass, so a device with
little memory runs a batch of 256 as four passes of 64 and accumulates their
gradients before the single optimizer step. Each slice's loss is weighted by
its share of the batch's rows; for a loss that is a mean over rows (or a sum
of means over parts of the batch, split in proportion) the accumulated
gradient is the full batch's. What a micro-batch cannot reproduce exactly is
anything computed across the batch inside the network: BatchNorm in training
mode normalises each slice by its own statistics ("ghost batches"), and the
dreaming's BN-statistics and class-balance terms are measured per slice.
"""

from __future__ import annotations

import math


def row_chunks(n: int, micro_batch: int | None) -> list[tuple[int, int]]:
    """``[start, end)`` bounds of near-equal slices of ``n`` rows, each at most ``micro_batch`` and at least 2 rows.

    ``None`` (or a micro-batch as large as ``n``) gives the whole batch as one slice.
    """
    if micro_batch is None or micro_batch >= n:
        return [(0, n)]
    k = max(1, min(math.ceil(n / micro_batch), n // 2))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def proportional_chunks(n_a: int, n_b: int, micro_batch: int | None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Slices of two parts of one batch (real rows, dreamed rows) cut in the same proportions.

    Slice ``i`` holds rows ``[a0, a1)`` of the first part and ``[b0, b1)`` of
    the second, at most ``micro_batch`` rows together; with equal part sizes
    (the replay default) every slice holds the same share of each part, which
    keeps a per-part mean loss exact under accumulation.
    """
    total = n_a + n_b
    k = len(row_chunks(total, micro_batch))
    bounds_a = [round(i * n_a / k) for i in range(k + 1)]
    bounds_b = [round(i * n_b / k) for i in range(k + 1)]
    return [((bounds_a[i], bounds_a[i + 1]), (bounds_b[i], bounds_b[i + 1])) for i in range(k)]
