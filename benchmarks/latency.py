"""Latency of exported models: ONNX Runtime against torch eager, same input contract.

Used by benchmarks/deployment.py; a measurement tool, not part of the SDK.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from abd_edge.errors import ConfigError
from abd_edge.export.onnx_export import _eval_mode, _module_device
from abd_edge.export.onnx_io import make_session


def _random_input(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype in ("tensor(uint8)", "uint8"):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def _timing(times_s: list[float], batch_size: int, threads: int | None, runtime: str) -> dict[str, Any]:
    med = statistics.median(times_s)
    return {
        "runtime": runtime,
        "batch_size": batch_size,
        "threads": threads,
        "repeats": len(times_s),
        "median_ms": med * 1e3,
        "min_ms": min(times_s) * 1e3,
        "images_per_s": batch_size / med if med > 0 else float("inf"),
    }


def _check_timing_args(batch_size: int, repeats: int, warmup: int) -> None:
    for name, v, lo in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def _wall_times(call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per ``call()`` over ``repeats`` runs, after ``warmup`` untimed ones (``call`` must block until done)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def onnx_latency(
    onnx_path: str | os.PathLike[str],
    batch_size: int,
    input_shape_nhwc: Sequence[int],
    *,
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Median wall time of one ONNX Runtime call on a batch (and images/s).

    ``input_shape_nhwc`` is the shape after the batch dimension, (H, W, C)
    for a classifier (``(zdim,)`` also works for a generator). The input
    dtype follows the model (random pixels for uint8, normal noise for float).
    Warm-up runs are excluded: the first calls allocate memory arenas.
    """
    _check_timing_args(batch_size, repeats, warmup)
    session = make_session(onnx_path, threads=threads)
    inp = session.get_inputs()[0]
    x = _random_input(inp.type, (batch_size, *(int(v) for v in input_shape_nhwc)), seed)
    feeds = {inp.name: x}
    times = _wall_times(lambda: session.run(None, feeds), warmup, repeats)
    return _timing(times, batch_size, threads, "onnxruntime")


def torch_latency(
    module: nn.Module,
    batch_size: int,
    input_shape_nhwc: Sequence[int],
    *,
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    dtype: str = "uint8",
) -> dict[str, Any]:
    """The same measurement for a torch module in eager mode (eval, inference mode), same input contract.

    Pass a :class:`DeployedClassifier` to time exactly what the ONNX graph
    does. ``threads`` temporarily sets ``torch.set_num_threads``.
    """
    _check_timing_args(batch_size, repeats, warmup)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    x = torch.from_numpy(_random_input(dtype, (batch_size, *(int(v) for v in input_shape_nhwc)), seed))
    x = x.to(_module_device(module))
    prev_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        def call() -> None:
            module(x)
            sync()

        with _eval_mode(module), torch.inference_mode():
            times = _wall_times(call, warmup, repeats)
    finally:
        torch.set_num_threads(prev_threads)
    return _timing(times, batch_size, threads, "torch")
