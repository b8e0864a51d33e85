"""Which ONNX Runtime can read which ONNX file, and opening sessions with errors that say why not.

An ONNX file declares an IR version (the container format) and an opset per
domain (the operators). ONNX Runtime releases read up to a fixed IR version
and opset; a newer file is refused with a bare ``Unsupported model IR
version`` from deep inside ORT. The exporter therefore stamps the lowest IR
version the opset needs, records the first ONNX Runtime release that reads
the result, and the device checks that number before it opens anything.
This module imports neither torch nor onnx: the runtime uses it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from .bundle_schema import session_options
from .errors import BundleError

#: (first ONNX Runtime release, highest IR version it reads, highest ai.onnx opset it runs), oldest first.
#: From ONNX Runtime's compatibility table (docs: "ONNX Runtime compatibility").
ORT_SUPPORT: tuple[tuple[str, int, int], ...] = (
    ("1.14", 8, 18),
    ("1.15", 9, 19),
    ("1.17", 9, 20),
    ("1.18", 10, 21),
    ("1.20", 10, 22),
    ("1.22", 11, 23),
)

#: The oldest ONNX Runtime this project has run its bundles on (see docs/DEPLOYMENT.md).
OLDEST_TESTED_ORT = "1.15.1"


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.17.3"`` -> ``(1, 17, 3)``; suffixes like ``.dev20240101`` or ``+cu118`` are ignored."""
    parts = []
    for piece in str(text).split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def min_onnxruntime_for(ir_version: int, opsets: Mapping[str, int]) -> str:
    """The first ONNX Runtime release that reads a file of this IR version and these opsets."""
    opset = int(opsets.get("ai.onnx", opsets.get("", 0)) or 0)
    for release, max_ir, max_opset in ORT_SUPPORT:
        if ir_version <= max_ir and opset <= max_opset:
            return release
    newest = ORT_SUPPORT[-1]
    raise ValueError(
        f"IR version {ir_version} / opset {opset} is newer than any ONNX Runtime this release knows "
        f"(up to IR {newest[1]}, opset {newest[2]} in {newest[0]})"
    )


def check_onnxruntime(required: str | None, where: str, installed: str | None = None) -> None:
    """Raise :class:`BundleError` if the installed ONNX Runtime is older than ``required``."""
    if not required:
        return
    if installed is None:
        import onnxruntime as ort

        installed = ort.__version__
    if parse_version(installed) < parse_version(required):
        raise BundleError(
            f"{where} needs ONNX Runtime >= {required}, but {installed} is installed; "
            f"upgrade it (pip install 'onnxruntime>={required}') or export the bundle with an older opset"
        )


def open_session(path: str | Path, options: Any = None, *, what: str | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path``; ORT's own load failures become :class:`BundleError`.

    ``options`` default to :func:`abd_edge.bundle_schema.session_options`, the project's one set.
    """
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=options if options is not None else session_options(),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types (Fail, InvalidGraph, ...)
        raise BundleError(
            f"ONNX Runtime {ort.__version__} cannot load {what or Path(path).name} ({path}): {type(e).__name__}: {e}"
        ) from e
