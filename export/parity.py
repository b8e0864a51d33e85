"""Checking an export against torch, on inputs that need no stored real data.

:func:`verify_parity` runs the same inputs through ONNX Runtime and the torch
module and fails the export if they differ; :func:`verification_images` and
:func:`dreamed_images` produce those inputs from the learner's generator, so
a device that keeps no training images can still verify what it exports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from abd_edge.bundle_schema import TENSORS
from abd_edge.errors import ConfigError, ExportError, ImageSpecError

from .onnx_export import _eval_mode, _module_device
from .onnx_io import make_session

__all__ = ["verify_parity", "verification_images", "dreamed_images"]


def _torch_outputs(module: nn.Module, tensors: list[torch.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Run ``module`` in eval mode without gradients and name its outputs like the ONNX graph's."""
    with _eval_mode(module), torch.no_grad():
        out = module(*tensors)
    if isinstance(out, Mapping):
        items = {str(k): v for k, v in out.items()}
    elif isinstance(out, (tuple, list)):
        items = dict(zip(names, out))
    else:
        items = {names[0]: out}
    return {k: v.detach().float().cpu().numpy() for k, v in items.items()}


def verify_parity(
    torch_module: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-6,
    output: str = TENSORS.logits,
) -> dict[str, Any]:
    """Check that ONNX Runtime and torch agree on ``inputs``; raise :class:`ExportError` if not.

    Compares the named ``output``: every element must satisfy
    ``|ort - torch| <= atol + rtol * scale``, where ``scale`` is the largest
    magnitude in that sample's output row. For logits of ordinary size this
    is the absolute bound ``atol``; the small relative part only matters for
    a model whose outputs reach the thousands, where float32 rounding of the
    large values (about 6e-8 of them per operation) leaves every element of
    the row uncertain by more than any fixed bound. For 2-D (N, classes) outputs the top-1 class must be
    the same for every row. A top-1 flip is forgiven only where torch itself
    has the two classes within ``atol`` of each other (a numerical tie that
    any change of summation order can break); those are counted as
    ``top1_ties``. Returns ``max_abs_diff``, ``top1_equal`` (strict, None
    for non-classifier outputs), ``top1_ties`` and ``n``.
    """
    path = Path(onnx_path)
    session = make_session(path)
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    missing = [n for n in in_names if n not in inputs]
    extra = [n for n in inputs if n not in in_names]
    if missing or extra:
        raise ExportError(f"inputs for {path.name} must be named {in_names}; got {sorted(inputs)}")
    if output not in out_names:
        raise ExportError(f"{path.name} has outputs {out_names}; there is no output {output!r} to compare")
    feeds = {n: np.ascontiguousarray(inputs[n]) for n in in_names}
    ort_out = dict(zip(out_names, session.run(None, feeds)))[output]
    device = _module_device(torch_module)
    tensors = [torch.from_numpy(feeds[n].copy()).to(device) for n in in_names]
    torch_out = _torch_outputs(torch_module, tensors, out_names)
    if output not in torch_out:
        raise ExportError(f"the torch module has no output {output!r} (it returns {sorted(torch_out)})")
    ref = torch_out[output]
    if ref.shape != ort_out.shape:
        raise ExportError(
            f"{path.name}: output {output!r} has shape {tuple(ort_out.shape)} in ONNX Runtime "
            f"but {tuple(ref.shape)} in torch"
        )
    diff = np.abs(ort_out.astype(np.float64) - ref.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    mag = np.abs(ref.astype(np.float64))
    scale = mag.reshape(mag.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (mag.ndim - 1)) if mag.ndim and mag.size else mag
    excess = diff - (atol + rtol * scale)
    if not np.isfinite(max_diff):
        raise ExportError(f"{path.name}: output {output!r} is not finite in ONNX Runtime or torch")
    n = int(ref.shape[0]) if ref.ndim else 1
    top1_equal: bool | None = None
    ties = 0
    bad_rows: list[int] = []
    if ref.ndim == 2 and ref.shape[1] > 0:
        t_top, o_top = ref.argmax(1), ort_out.argmax(1)
        top1_equal = bool(np.all(t_top == o_top))
        for i in np.flatnonzero(t_top != o_top):
            if ref[i, t_top[i]] - ref[i, o_top[i]] <= atol:
                ties += 1
            else:
                bad_rows.append(int(i))
    result = {"max_abs_diff": max_diff, "top1_equal": top1_equal, "top1_ties": ties, "n": n, "atol": atol, "rtol": rtol,
              "max_abs_output": float(mag.max()) if mag.size else 0.0}
    if diff.size and float(excess.max()) > 0:
        raise ExportError(
            f"{path.name}: ONNX Runtime and torch differ by {max_diff:.3g} on output {output!r} "
            f"over {n} inputs; expected at most atol={atol:g} + rtol={rtol:g} * (largest |output| of the sample)"
        )
    if bad_rows:
        raise ExportError(
            f"{path.name}: top-1 class differs between ONNX Runtime and torch for {len(bad_rows)} of {n} "
            f"inputs (rows {bad_rows[:10]}) although max |diff| {max_diff:.3g} <= atol={atol:g}"
        )
    return result


def verification_images(source: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 NHWC images to verify an export on, without any stored real data.

    ``source`` is a learner or a ``(normalizer, generator)`` pair. About half
    are dreamed: generator samples (eval mode) mapped from the normalised
    input space back to pixels (x * std + mean, clamped to [0, 1], * 255,
    rounded). They exercise the classifier where it was trained, so top-1
    comparisons are meaningful. The rest are uniform random pixels, which
    reach the extremes 0 and 255 the dreams rarely produce. With no
    generator (a method without replay) all images are random.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ConfigError(f"source must be a learner or a (normalizer, generator) pair, got a {len(source)}-tuple")
        normalizer, generator = source
        shape = None
    else:
        normalizer, generator = source.normalizer, source.generator
        shape = source.input_shape
    mean = torch.as_tensor(normalizer.mean, dtype=torch.float32).detach().cpu().reshape(1, -1, 1, 1)
    std = torch.as_tensor(normalizer.std, dtype=torch.float32).detach().cpu().reshape(1, -1, 1, 1)
    n_dream = (n + 1) // 2 if generator is not None else 0
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    if generator is not None:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(n_dream, generator.zdim, generator=g)
        out = TENSORS.generator_output
        x = _torch_outputs(generator, [z.to(_module_device(generator))], [out])[out]
        pix = (torch.from_numpy(x) * std + mean).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        parts.append(pix.permute(0, 2, 3, 1).contiguous().numpy())
        shape = tuple(x.shape[1:])
    if shape is None:
        raise ConfigError("cannot tell the image shape: give a learner or a (normalizer, generator) pair with a generator")
    c, h, w = shape
    if mean.numel() != c:
        raise ImageSpecError(f"normalizer has {mean.numel()} channels but the images have {c}")
    parts.append(rng.integers(0, 256, size=(n - n_dream, h, w, c), dtype=np.uint8))
    return np.ascontiguousarray(np.concatenate(parts))


def dreamed_images(learner: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 NHWC images sampled from the learner's generator only (no random pixels).

    What int8 calibration should see: the distribution the classifier was
    trained on, as far as the generator knows it. Uniform noise would widen
    the activation ranges the calibrator records and cost int8 precision
    where real images lie.
    """
    if learner.generator is None:
        raise ConfigError("the learner has no generator to dream calibration images with")
    return verification_images((learner.normalizer, learner.generator), 2 * n, seed=seed)[:n]
