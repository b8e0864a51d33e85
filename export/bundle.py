"""Writing a deployment bundle version: ONNX models, the learner's state, the manifest.

Every version is staged in a private directory, checked (onnx.checker and
ONNX Runtime parity against torch) and only then committed by the bundle
store, which renames it into place and switches the CURRENT pointer last. A
failed check raises and leaves the bundle exactly as it was.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from abd_edge import __version__
from abd_edge.bundle_format import MANIFEST, read_json
from abd_edge.bundle_schema import (
    CLASSIFIER_INT8_ONNX,
    CLASSIFIER_ONNX,
    GENERATOR_ONNX,
    LEARNER_DIR,
    TENSORS,
    ClassEntry,
    GeneratorSpec,
    InputSpec,
    Manifest,
)
from abd_edge.bundle_store import BundleStore
from abd_edge.checkpoint import save_learner
from abd_edge.errors import ConfigError
from abd_edge.onnx_compat import parse_version
from abd_edge.progress import Stages
from abd_edge.signing import sign_version

from .onnx_export import (DEFAULT_OPSET, DeployedClassifier, export_classifier, export_generator,
                          reexport_classifier_head)
from .parity import dreamed_images, verification_images, verify_parity
from .quantize import compare_int8, int8_verdict, quantize_classifier_int8

if TYPE_CHECKING:
    from abd_edge.learner import Learner

log = logging.getLogger(__name__)


def _classes(learner: "Learner") -> tuple[ClassEntry, ...]:
    reg = learner.registry
    return tuple(ClassEntry(i, reg.label_of(i), reg.name_of(i)) for i in range(len(reg)))


def _stage_names(learner: "Learner", quantize: str | None, serve_only: bool, generator_onnx: bool) -> list[str]:
    names = ["classifier ONNX", "classifier parity"]
    if learner.generator is not None and not serve_only and generator_onnx:
        names += ["generator ONNX + parity"]
    if quantize == "int8":
        names += ["int8 calibration"]
    if not serve_only:
        names += ["learner state"]
    return names + ["manifest + commit"]


def export_bundle(
    learner: "Learner",
    path: str | Path | BundleStore,
    *,
    quantize: str | None = None,
    keep_versions: int = 3,
    lock_timeout_s: float = 0.0,
    opset: int = DEFAULT_OPSET,
    verify_images: int = 64,
    summary: dict[str, Any] | None = None,
    sign_key: Any = None,
    serve_only: bool = False,
    keep_optimizer: bool = False,
    generator_onnx: bool = False,
    show_progress: bool = True,
    previous_classifier: str | Path | None = None,
) -> dict[str, Any]:
    """Export ``learner`` as a new version of the bundle at ``path``; return what was written.

    ``quantize="int8"`` adds an int8 classifier (static quantization
    calibrated on dreamed images, never on stored data) next to the fp32 one.
    The returned dict has ``version``, ``parent_version``, ``bytes`` (all
    files), per-file sizes, the parity results and the manifest (as the
    JSON object written; ``Manifest.from_dict`` types it).
    ``sign_key`` (a key file from ``abd-edge keygen``, or a key object)
    signs the version (see :mod:`abd_edge.signing`). ``serve_only`` writes
    what prediction needs and nothing else (classifier, int8 classifier,
    manifest): no generator, no learner state, so a device can serve it but
    not learn on it. The generator's Adam state (twice the generator's
    size) stays out unless ``keep_optimizer``: a device update then starts
    a fresh Adam, as the short recipe's ``keep_optimizer=False`` does.

    The generator travels once, as the learner's weights (what an update
    trains on). ``generator_onnx=True`` adds ``generator.onnx`` too, for
    dreaming without torch or in another runtime; the paper generator is
    32 MB per copy, and the exported graph folds its BatchNorms, so the
    weights cannot be recovered from the ONNX file. Without it,
    ``device.dream()`` dreams through torch: a device that dreams is a
    device that updates, and an update needs torch anyway.
    ``show_progress`` draws a bar over the export stages (only when someone
    watches, see :mod:`abd_edge.progress`). ``previous_classifier``: the
    classifier file of a version whose backbone the learner still has bit
    for bit (an update that only set the head); its head is rewritten
    instead of exporting the whole network again
    (:func:`~abd_edge.export.onnx_export.reexport_classifier_head`), and the
    full export runs if that file does not have the expected shape. The
    parity check below verifies the result either way.
    """
    learner._require_fitted("export")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    store = path if isinstance(path, BundleStore) else BundleStore(path, keep_versions=keep_versions, lock_timeout_s=lock_timeout_s)
    c, h, w = learner.input_shape  # type: ignore[misc]
    start = time.perf_counter()
    with Stages(_stage_names(learner, quantize, serve_only, generator_onnx), desc="export", enabled=show_progress,
                log=log) as bar, store.new_version() as staged:
        d = staged.path
        bar.stage("classifier ONNX")
        labels = {"labels": [learner.registry.label_of(i) for i in range(learner.num_classes)],
                  "class_names": [learner.registry.name_of(i) for i in range(learner.num_classes)]}
        # the parity check's eval-mode copy of the model; the head rewrite only reads it (the full export, whose
        # tracing could touch its module, makes its own)
        deployed = DeployedClassifier(learner.model, learner.normalizer, learner.num_classes, (c, h, w))
        cls_info = None
        if previous_classifier is not None:
            cls_info = reexport_classifier_head(previous_classifier, deployed, learner.normalizer, learner.num_classes,
                                                (c, h, w), d / CLASSIFIER_ONNX, metadata=labels)
            if cls_info is None:
                log.warning("%s has no Slice(Gemm) head of this model's shape: exporting the whole classifier",
                            previous_classifier)
        if cls_info is None:
            cls_info = export_classifier(learner.model, learner.normalizer, learner.num_classes, (c, h, w),
                                         d / CLASSIFIER_ONNX, opset=opset, metadata=labels)
        min_ort = [cls_info["min_onnxruntime"]]
        bar.stage("classifier parity")
        images = verification_images(learner, verify_images, seed=learner.tasks_learned)
        parity = {"classifier": verify_parity(deployed, d / CLASSIFIER_ONNX, {TENSORS.classifier_input: images})}
        gen_info = None
        if learner.generator is not None and not serve_only and generator_onnx:
            bar.stage("generator ONNX + parity")
            gen_info = export_generator(learner.generator, d / GENERATOR_ONNX, opset=opset)
            min_ort.append(gen_info["min_onnxruntime"])
            z = np.random.default_rng(learner.tasks_learned).standard_normal((16, learner.generator.zdim)).astype(np.float32)
            parity["generator"] = verify_parity(_eval_copy(learner.generator), d / GENERATOR_ONNX,
                                                {TENSORS.generator_input: z}, output=TENSORS.generator_output)
        quant = None
        if quantize == "int8":
            bar.stage("int8 calibration")
            quant = _int8(learner, d, verify_images, min_ort)
        known: dict[str, Any] = {}
        if not serve_only:
            bar.stage("learner state")
            save_learner(learner, d / LEARNER_DIR, keep_optimizer=keep_optimizer)
            known = _hashed_by_save(d / LEARNER_DIR)
        bar.stage("manifest + commit")
        manifest = staged.write(Manifest(
            version=staged.version,
            parent_version=staged.parent_version,
            abd_edge_version=__version__,
            classes=_classes(learner),
            input=InputSpec(h, w, c),
            mean=tuple(learner.normalizer.mean.cpu().tolist()),
            std=tuple(learner.normalizer.std.cpu().tolist()),
            tensors=TENSORS,
            opset=opset,
            ir_version=cls_info["ir_version"],
            min_onnxruntime=max(min_ort, key=parse_version),
            generator=None if learner.generator is None or serve_only else GeneratorSpec(
                learner.generator.zdim, onnx=gen_info is not None),
            learner={"method": learner.config.method, "tasks_learned": learner.tasks_learned,
                     "config": learner.config.to_dict(), "history": [r.to_dict() for r in learner.history],
                     # what of the non-private data the learner's weights carry (docs/PRIVACY.md); none without them
                     "class_statistics": None if serve_only or learner._state.class_statistics is None
                     else learner._state.class_statistics.to_dict()},
            privacy={"ledger": list(getattr(learner, "privacy_ledger", []))},
            parity=parity,
            quantization=quant,
            summary=summary or {"update": "export", "n_classes": learner.num_classes},
            serve_only=bool(serve_only),
        ), known=known)
        written = read_json(d / MANIFEST)  # the exact object a reader (and a signature) sees
        if sign_key is not None:
            sign_version(d, written, sign_key)
    files = {name: entry.bytes for name, entry in manifest.files.items()}
    info = {
        "version": staged.version,
        "parent_version": staged.parent_version,
        "path": str(store.version_dir(staged.version)),
        "bytes": sum(files.values()),
        "files": files,
        "parity": parity,
        "quantization": quant,
        "classifier_export": cls_info["reexport"],  # "full", or "head": the parent's file with its head rewritten
        "seconds": time.perf_counter() - start,
        "manifest": written,
    }
    log.info("bundle version %s written (%.1f MB, %.1f s)", staged.version, info["bytes"] / 2**20, info["seconds"])
    return info


def _hashed_by_save(learner_dir: Path) -> dict[str, Any]:
    """The entries the learner's own manifest holds, keyed by their path in the bundle: hashed once, reused."""
    inner = read_json(learner_dir / MANIFEST).get("files", {})
    return {f"{LEARNER_DIR}/{name}": entry for name, entry in inner.items()}


def _int8(learner: "Learner", d: Path, n: int, min_ort: list[str]) -> dict[str, Any]:
    """Quantise on dreamed images; keep the int8 file only if it agrees with fp32 often enough."""
    if learner.generator is None:
        return {"included": False, "warning": "int8 classifier left out: no generator to dream calibration images with"}
    calibration = dreamed_images(learner, n, seed=1000 + learner.tasks_learned)
    quant = quantize_classifier_int8(d / CLASSIFIER_ONNX, d / CLASSIFIER_INT8_ONNX, calibration)
    quant.pop("path")  # a staging path, meaningless once committed
    held_out = dreamed_images(learner, n, seed=2000 + learner.tasks_learned)
    quant["agreement"] = compare_int8(d / CLASSIFIER_ONNX, d / CLASSIFIER_INT8_ONNX, held_out)
    quant["calibration"] = "dreamed images only"
    warning = int8_verdict(quant["agreement"]["top1_agreement"])
    quant["included"] = warning is None
    if warning:
        (d / CLASSIFIER_INT8_ONNX).unlink()
        quant["warning"] = warning
        log.warning("%s", warning)
    else:
        min_ort.append(quant["min_onnxruntime"])
    return quant


def _eval_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).eval()
