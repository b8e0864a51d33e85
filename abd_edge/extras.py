"""Which optional extra provides which feature, and a clear error when it is absent.

``pip install abd-edge`` is the device runtime (numpy and ONNX Runtime).
Training and export need ``abd-edge[train]`` (torch, onnx, ...), signing
needs ``abd-edge[sign]`` (cryptography), and so on. Code that needs an extra
calls :func:`require` first, so that a runtime-only install fails with a
message that says what to install instead of a bare ``ModuleNotFoundError``.
This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

#: import name -> the extra that installs it
EXTRA_OF = {
    "torch": "train",
    "torchvision": "train",
    "onnx": "train",
    "onnxscript": "train",
    "safetensors": "train",
    "tqdm": "train",
    "PIL": "train",
    "cryptography": "sign",
    "opacus": "privacy",
    "matplotlib": "bench",
    "sklearn": "bench",
}


def install_hint(extra: str) -> str:
    return f"pip install 'abd-edge[{extra}]'"


def missing(*modules: str) -> list[str]:
    """The top-level modules among ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str, feature: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra(s) if any of ``modules`` is absent."""
    absent = missing(*modules)
    if absent:
        extras = sorted({EXTRA_OF.get(m, "all") for m in absent})
        hint = " and ".join(install_hint(e) for e in extras)
        raise MissingDependencyError(
            f"{feature} needs {', '.join(absent)}, which this install lacks (the base install is the "
            f"device runtime only); install it with: {hint}"
        )


def import_or_explain(module: str, *, feature: str) -> ModuleType:
    """Import ``module``; if a dependency of the train side is missing, say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in EXTRA_OF:
            raise MissingDependencyError(
                f"{feature} needs {top}, which this install lacks (the base install is the device runtime "
                f"only); install it with: {install_hint(EXTRA_OF[top])}"
            ) from e
        raise
