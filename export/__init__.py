"""abd_edge.export: ONNX export of the classifier and the generator, and bundle writing."""

from .bundle import export_bundle
from .onnx_export import (
    DeployedClassifier,
    compare_int8,
    export_classifier,
    export_generator,
    onnx_latency,
    quantize_classifier_int8,
    torch_latency,
    verification_images,
    verify_parity,
)

__all__ = [
    "export_bundle",
    "DeployedClassifier",
    "export_classifier",
    "export_generator",
    "verify_parity",
    "verification_images",
    "quantize_classifier_int8",
    "compare_int8",
    "onnx_latency",
    "torch_latency",
]
