"""abd_edge.export: ONNX export of the classifier and the generator, and bundle writing.

Needs the ``train`` extra (torch, onnx, onnxscript): ``pip install 'abd-edge[train]'``.
Modules by job: :mod:`.onnx_export` (torch -> ONNX), :mod:`.onnx_io` (atomic
writes, checks, IR stamping, metadata), :mod:`.parity` (ONNX Runtime against
torch), :mod:`.quantize` (int8), :mod:`.bundle` (a bundle version).
"""

from abd_edge.extras import require

require("torch", "onnx", "onnxscript", "safetensors", feature="abd_edge.export (ONNX export)")

from .bundle import export_bundle  # noqa: E402
from .onnx_export import DeployedClassifier, export_classifier, export_generator  # noqa: E402
from .onnx_io import make_session, read_metadata  # noqa: E402
from .parity import dreamed_images, verification_images, verify_parity  # noqa: E402
from .quantize import INT8_MIN_AGREEMENT, compare_int8, quantize_classifier_int8  # noqa: E402

__all__ = [
    "export_bundle",
    "DeployedClassifier",
    "export_classifier",
    "export_generator",
    "make_session",
    "read_metadata",
    "verify_parity",
    "verification_images",
    "dreamed_images",
    "quantize_classifier_int8",
    "compare_int8",
    "INT8_MIN_AGREEMENT",
]
