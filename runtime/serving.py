"""Serving one bundle version: its ONNX Runtime session, classes and input spec, checked against each other.

numpy and onnxruntime only. The manifest arrives verified (digest, and the
hash of every file this version serves with) and typed
(:class:`abd_edge.bundle_schema.Manifest`); what is checked here is that it
agrees with the graph it describes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnxruntime as ort

from abd_edge.bundle_format import verify_files
from abd_edge.bundle_schema import CLASSIFIER_INT8_ONNX, CLASSIFIER_ONNX, Manifest, session_options
from abd_edge.errors import BundleError, BundleIntegrityError, ConfigError, ImageSpecError
from abd_edge.onnx_compat import open_session
from abd_edge.prediction import PredictionResult


@dataclass
class RuntimePrediction(PredictionResult[np.ndarray]):
    """What ``Learner.predict`` returns, as numpy arrays, and the bundle version that computed it."""

    version: str | None = None


def served_file(int8: bool) -> str:
    """The classifier file a device serves with."""
    return CLASSIFIER_INT8_ONNX if int8 else CLASSIFIER_ONNX


@dataclass(frozen=True, eq=False)
class Served:
    """Everything one bundle version serves with, built completely before it is published.

    A version switch (rollback, update, refresh) replaces the one reference
    to this object; a predict call reads that reference once, so its
    session, classes and input spec always come from the same version,
    whatever another thread switches meanwhile. ``verified`` holds the files
    whose sha256 has been checked since the version was opened; the others
    (learner state, generator) are checked when first used.
    """

    version: str
    directory: Path
    manifest: Manifest
    raw_manifest: dict[str, Any] = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    verified: set[str] = field(default_factory=set, repr=False)
    _verify_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def labels(self) -> tuple[int | str, ...]:
        return self.manifest.labels

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return self.manifest.input.shape

    def where(self) -> str:
        return f"bundle version {self.version} ({self.directory})"

    def ensure_verified(self, names: Iterable[str]) -> None:
        """Hash the listed ``names`` not hashed yet since this version was opened (each file once per open)."""
        with self._verify_lock:
            todo = {n: self.manifest.files[n] for n in names if n not in self.verified}
            if todo:
                verify_files(self.directory, {n: {"sha256": e.sha256, "bytes": e.bytes} for n, e in todo.items()})
                self.verified.update(todo)

    def input_spec(self) -> str:
        h, w, c = self.input_shape
        return f"uint8 images shaped (N, {h}, {w}, {c}) (NHWC, pixel values 0..255)"

    def check_images(self, images: Any) -> np.ndarray:
        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise ImageSpecError(f"images have dtype {x.dtype}; this bundle expects {self.input_spec()}")
        if x.shape == self.input_shape:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ImageSpecError(f"images have shape {x.shape}; this bundle expects {self.input_spec()}")
        if x.shape[0] == 0:
            raise ImageSpecError(f"no images given; this bundle expects {self.input_spec()}")
        return np.ascontiguousarray(x)

    def run(self, output: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        feed = self.manifest.tensors.classifier_input
        outs = [self.session.run([output], {feed: x[s : s + batch_size]})[0] for s in range(0, len(x), batch_size)]
        return np.concatenate(outs)


def open_version(
    directory: Path,
    version: str,
    manifest: Manifest,
    raw: dict[str, Any],
    *,
    int8: bool,
    threads: int | None,
    verified: Iterable[str] = (),
) -> Served:
    """Open ``version``'s classifier and check that its verified ``manifest`` (``raw`` as written) describes it.

    A class table one entry short, or an input shape that is not the
    model's, would otherwise open fine and fail in predict: checked by the
    graph's static shapes and one probe run on a blank image.
    """
    where = f"bundle version {version} ({directory})"
    name = served_file(int8)
    if not manifest.has(name):
        why = manifest.int8_note or "export with quantize='int8'"
        raise BundleError(f"{where} has no {name}" + (f" ({why})" if int8 else ""))
    session = open_session(directory / name, session_options(threads), what=f"{name} of {where}")
    served = Served(version, directory, manifest, raw, session, set(verified))
    _check_graph(served, name)
    return served


def _check_graph(served: Served, name: str) -> None:
    where, names = served.where(), served.manifest.tensors
    inputs = {i.name: i for i in served.session.get_inputs()}
    outputs = {o.name: o for o in served.session.get_outputs()}
    feed = names.classifier_input
    if feed not in inputs or not set(names.classifier_outputs) <= set(outputs):
        raise BundleIntegrityError(
            f"{name} of {where} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the manifest expects input {feed!r} and outputs {list(names.classifier_outputs)}"
        )
    shape, n = served.input_shape, len(served.labels)
    declared = list(inputs[feed].shape)[1:]
    if len(declared) != 3 or any(isinstance(d, int) and d != s for d, s in zip(declared, shape)):
        raise BundleIntegrityError(
            f"the manifest of {where} says input shape (N, {shape[0]}, {shape[1]}, {shape[2]}), "
            f"but {name} takes {inputs[feed].shape}"
        )
    for out in names.classifier_outputs:
        width = list(outputs[out].shape)[-1]
        if isinstance(width, int) and width != n:
            raise BundleIntegrityError(f"the manifest of {where} lists {n} classes, but {name} outputs {width} {out}")
    try:
        probe = served.session.run([names.logits], {feed: np.zeros((1, *shape), np.uint8)})[0]
    except Exception as e:  # onnxruntime's own exception classes
        raise BundleIntegrityError(f"{name} of {where} does not run on the manifest's input spec: {e}") from None
    if probe.shape != (1, n):
        raise BundleIntegrityError(f"the manifest of {where} lists {n} classes, but {name} outputs logits shaped {probe.shape}")


def to_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised NCHW float images -> uint8 NHWC pixels (the classifier's input contract)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    x = np.clip(images * s + m, 0.0, 1.0)
    return np.ascontiguousarray((np.rint(x * 255)).astype(np.uint8).transpose(0, 2, 3, 1))
