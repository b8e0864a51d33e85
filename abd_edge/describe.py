"""What is in a bundle root, a bundle version or a saved learner: for ``abd-edge info``, without torch.

Reads manifests and JSON only (files are verified against their hashes on
the way), so it runs on a device with the base install. The privacy ledger,
the signature and the minimum ONNX Runtime are reported as recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundle_format import MANIFEST, read_json, read_manifest
from .bundle_store import CURRENT, KIND as BUNDLE_KIND, BundleStore
from .errors import BundleError, BundleMissingFileError

LEARNER_KIND = "learner"


def _sizes(manifest: dict[str, Any]) -> dict[str, Any]:
    files = {name: int(e.get("bytes", 0)) for name, e in manifest.get("files", {}).items()}
    return {"files": files, "total_bytes": sum(files.values()), "total_mb": round(sum(files.values()) / 2**20, 3)}


def _classes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(manifest.get("classes") or [], key=lambda c: c.get("index", 0))


def _privacy_summary(privacy: Any) -> Any:
    """The ledger's total claim (which classes have a DP guarantee and which do not); None without a ledger."""
    ledger = (privacy or {}).get("ledger") if isinstance(privacy, dict) else None
    if not ledger:
        return None
    from .privacy.ledger import summarize  # torch-free

    return _safe(lambda: summarize(ledger))


def describe_version(directory: Path) -> dict[str, Any]:
    """One bundle version: classes, sizes, runtime needs, quantisation, signature, privacy ledger."""
    from .signing import describe_signature

    manifest = read_manifest(directory, kind=BUNDLE_KIND)
    quant = manifest.get("quantization") or None
    learner = manifest.get("learner") or {}
    return {
        "kind": "bundle version",
        "path": str(directory),
        "version": manifest.get("version"),
        "parent_version": manifest.get("parent_version"),
        "created": manifest.get("created"),
        "abd_edge_version": manifest.get("abd_edge_version"),
        "classes": _classes(manifest),
        "input": manifest.get("input"),
        "min_onnxruntime": manifest.get("min_onnxruntime"),
        "ir_version": manifest.get("ir_version"),
        "opset": manifest.get("opset"),
        "method": learner.get("method"),
        "tasks_learned": learner.get("tasks_learned"),
        "history": learner.get("history", []),
        "class_statistics": learner.get("class_statistics"),
        "quantization": None if quant is None else {
            k: quant.get(k) for k in ("included", "warning", "agreement", "calibration") if k in quant
        },
        "sizes": _sizes(manifest),
        "signature": _safe(lambda: describe_signature(directory, manifest)),
        "privacy": manifest.get("privacy"),
        "privacy_summary": _privacy_summary(manifest.get("privacy")),
        "summary": manifest.get("summary"),
    }


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - e.g. cryptography absent: info still prints the rest
        return {"note": f"not checked: {e}"}


def describe_learner(directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory, kind=LEARNER_KIND)
    state = read_json(directory / "state.json")
    registry = state.get("registry") or {}
    return {
        "kind": "learner",
        "path": str(directory),
        "abd_edge_version": state.get("abd_edge_version"),
        "method": (state.get("config") or {}).get("method"),
        "tasks_learned": state.get("tasks_learned"),
        "input_shape": state.get("input_shape"),
        "head_capacity": state.get("head_capacity"),
        "registry": registry,
        "history": state.get("history", []),
        "keeps_generator_optimizer": state.get("generator_optimizer") is not None,
        "class_statistics": state.get("class_statistics"),
        "privacy": state.get("privacy") or state.get("privacy_ledger"),
        "config": state.get("config"),
        "sizes": _sizes(manifest),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Describe a bundle root (with CURRENT), a bundle version directory, or a saved learner directory."""
    p = Path(path)
    if not p.exists():
        raise BundleMissingFileError(f"{p} does not exist")
    if (p / CURRENT).is_file() or (p / "versions").is_dir():
        store = BundleStore(p)
        current = store.current_version()
        out: dict[str, Any] = {
            "kind": "bundle",
            "path": str(p),
            "current_version": current,
            "versions": store.history(),
        }
        if current is not None:
            out["current"] = describe_version(store.version_dir(current))
        return out
    if (p / MANIFEST).is_file():
        kind = read_json(p / MANIFEST).get("kind")
        if kind == BUNDLE_KIND:
            return describe_version(p)
        if kind == LEARNER_KIND:
            return describe_learner(p)
        raise BundleError(f"{p / MANIFEST} is a {kind!r} manifest; expected a bundle or a learner")
    raise BundleMissingFileError(
        f"{p} is neither a bundle (no {CURRENT}), a bundle version nor a learner directory (no {MANIFEST})"
    )
