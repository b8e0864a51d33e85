"""Static int8 quantisation of an exported classifier, and how closely it follows the fp32 one."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from abd_edge.errors import ConfigError, ExportError, ImageSpecError

from .onnx_export import CLASSIFIER_INPUT, CLASSIFIER_OUTPUTS
from .onnx_io import atomic_write, check_onnx_file, make_session, stamp, value_info

__all__ = ["INT8_MIN_AGREEMENT", "quantize_classifier_int8", "compare_int8", "int8_verdict"]

#: The int8 classifier ships only if its top-1 class agrees with fp32's on at least this share of
#: held-out dreamed images; below it the bundle keeps fp32 only and its manifest says why.
INT8_MIN_AGREEMENT = 0.9


def _check_uint8_images(images: Any, expected_hwc: Sequence[int | str] | None, what: str) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ImageSpecError(f"{what} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ImageSpecError(
            f"{what} must be non-empty uint8 (N, H, W, C), got {images.dtype} with shape {images.shape}"
        )
    if expected_hwc is not None:
        fixed = [(i, d) for i, d in enumerate(expected_hwc) if isinstance(d, int) and d > 0]
        if any(images.shape[1 + i] != d for i, d in fixed):
            raise ImageSpecError(
                f"{what} have (H, W, C) = {images.shape[1:]}; the model expects {tuple(expected_hwc)}"
            )
    return np.ascontiguousarray(images)


def _input_hwc(model: onnx.ModelProto, name: str) -> list[int | str]:
    for v in model.graph.input:
        if v.name == name:
            return value_info(v)["shape"][1:]
    raise ExportError(f"the model has no input {name!r}; expected an exported classifier")


# --------------------------------------------------------------------------- int8


def quantize_classifier_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: np.ndarray,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    batch_size: int = 16,
    preprocess: bool = True,
) -> dict[str, Any]:
    """Static int8 quantisation (QDQ) of an exported classifier, calibrated on given uint8 NHWC images.

    Calibrate on dreamed images (:func:`abd_edge.export.parity.dreamed_images`), never on
    stored real data: the deployment keeps no training images. Only Conv,
    Gemm, MatMul, Add and Relu are quantised, so the uint8 -> float
    preprocessing stays exact and the softmax keeps float precision
    (quantising it would make probabilities sum to 0.996). Activations are
    uint8 and weights int8 (the U8S8 scheme ORT's x86 kernels are fastest
    with); ``reduce_range`` uses 7-bit weights, which avoids overflow on
    x86 CPUs without VNNI if accuracy suffers there.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = Path(fp32_path)
    if not src.is_file():
        raise ExportError(f"fp32 model {src} does not exist")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    hwc = _input_hwc(onnx.load(str(src), load_external_data=False), CLASSIFIER_INPUT)
    images = _check_uint8_images(calibration_images, hwc, "calibration images")

    class _Reader(CalibrationDataReader):
        """Feeds the calibration images batch by batch (the calibrator pulls until None)."""

        def __init__(self) -> None:
            self._starts = iter(range(0, images.shape[0], batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self._starts, None)
            return None if s is None else {CLASSIFIER_INPUT: images[s : s + batch_size]}

    final = Path(out_path)
    start = time.perf_counter()
    metadata = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    stamped: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="abd-int8-") as work:
        source = src
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = Path(work) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(source))
            except Exception as e:
                raise ExportError(f"ONNX Runtime quantisation pre-processing failed on {src.name}: {e}") from e

        def write(tmp: Path) -> None:
            try:
                quantize_static(
                    str(source),
                    str(tmp),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add", "Relu"],
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
            except Exception as e:
                raise ExportError(f"int8 quantisation of {src.name} failed: {e}") from e
            stamped.update(stamp(tmp))
            model = onnx.load(str(tmp), load_external_data=False)  # carry the fp32 file's labels and layout
            onnx.helper.set_model_props(model, {**metadata, "abd_edge.quantization": "int8 QDQ, calibrated on dreamed images"})
            onnx.save(model, str(tmp))

        def check(tmp: Path) -> None:
            check_onnx_file(tmp, [CLASSIFIER_INPUT])

        atomic_write(final, write, check)
    return {
        "path": str(final),
        "bytes": final.stat().st_size,
        "fp32_bytes": src.stat().st_size,
        "ir_version": stamped["ir_version"],
        "opsets": stamped["opsets"],
        "min_onnxruntime": stamped["min_onnxruntime"],
        "seconds": time.perf_counter() - start,
        "calibration_images": int(images.shape[0]),
        "format": "QDQ",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "activation_type": "uint8",
        "weight_type": "int8",
    }


def compare_int8(
    fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], images: np.ndarray
) -> dict[str, Any]:
    """How closely the int8 model follows the fp32 one on ``images`` (uint8 NHWC).

    ``top1_agreement`` is the fraction of images with the same predicted
    class; ``max_prob_diff`` / ``mean_prob_diff`` compare the probabilities.
    """
    s32, s8 = make_session(fp32_path), make_session(int8_path)
    hwc = _value_info_from_session(s32)
    x = _check_uint8_images(images, hwc, "images")
    p32 = s32.run([CLASSIFIER_OUTPUTS[1]], {CLASSIFIER_INPUT: x})[0]
    p8 = s8.run([CLASSIFIER_OUTPUTS[1]], {CLASSIFIER_INPUT: x})[0]
    d = np.abs(p32.astype(np.float64) - p8.astype(np.float64))
    return {
        "n": int(x.shape[0]),
        "top1_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
        "max_prob_diff": float(d.max()),
        "mean_prob_diff": float(d.max(axis=1).mean()),
    }


def _value_info_from_session(session: Any) -> list[int | str]:
    for i in session.get_inputs():
        if i.name == CLASSIFIER_INPUT:
            return list(i.shape[1:])
    raise ExportError(f"the model has inputs {[i.name for i in session.get_inputs()]}; expected {CLASSIFIER_INPUT!r}")


def int8_verdict(agreement: float, threshold: float | None = None) -> str | None:
    """None when an int8 model with this top-1 ``agreement`` may ship; otherwise the reason it may not."""
    threshold = INT8_MIN_AGREEMENT if threshold is None else threshold
    if agreement >= threshold:
        return None
    return (
        f"int8 classifier left out: its top-1 class agreed with fp32 on {100 * agreement:.1f}% of held-out "
        f"dreamed images, below the {100 * threshold:.0f}% required (INT8_MIN_AGREEMENT)"
    )
