"""The device side: serve a bundle with ONNX Runtime and fold in new classes locally.

Prediction needs only numpy and onnxruntime. torch is imported inside
:meth:`DeviceLearner.learn_new_classes` and nowhere else, so a device that
only serves predictions never loads it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from abd_edge.bundle_format import CLASSIFIER_INT8_ONNX as CLASSIFIER_INT8
from abd_edge.bundle_format import CLASSIFIER_ONNX as CLASSIFIER
from abd_edge.bundle_format import GENERATOR_ONNX as GENERATOR
from abd_edge.bundle_format import LEARNER_DIR
from abd_edge.bundle_store import BundleStore
from abd_edge.errors import BundleError, BundleIntegrityError, ConfigError, ImageSpecError, LabelError, NotFittedError
from abd_edge.extras import require
from abd_edge.onnx_compat import check_onnxruntime, open_session
from abd_edge.resources import PeakRSS
from abd_edge.signing import verify_version

if TYPE_CHECKING:
    from abd_edge.export.quality import QualityGate

log = logging.getLogger(__name__)


@dataclass
class DeviceBudget:
    """What one local update may spend. Defaults: the engine's short-budget recipe cut to fit a device.

    One epoch over the local data and 40 dreaming iterations fold a
    cifar10-5x2 task (10,000 images of 2 classes) into the model in about
    five minutes on 2 CPU cores (see docs/DEPLOYMENT.md for the measurement).
    ``time_budget_s`` stops training (and then dreaming) early when reached;
    the report says so.
    """

    epochs: int = 1
    dream_iterations: int = 40
    batch_size: int | None = None  # None: the learner's own
    threads: int | None = None
    time_budget_s: float | None = None
    privacy: Any = None  # a PrivacyConfig (or its dict): DP updates; its epochs/batch_size/lr, if set, replace the above

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.dream_iterations < 0:
            raise ConfigError(f"dream_iterations must be >= 0, got {self.dream_iterations}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"time_budget_s must be positive, got {self.time_budget_s}")
        if self.privacy is not None:
            from abd_edge.config import PrivacyConfig

            if isinstance(self.privacy, dict):
                self.privacy = PrivacyConfig.from_dict(self.privacy)
            if not isinstance(self.privacy, PrivacyConfig):
                raise ConfigError(f"privacy must be a PrivacyConfig, a dict of one, or None, got {type(self.privacy).__name__}")
            self.privacy.validate()


@dataclass
class RuntimePrediction:
    indices: np.ndarray
    labels: list[int | str]
    names: list[str]
    probabilities: np.ndarray = field(repr=False)
    version: str | None = None  # the bundle version that computed all of the above


@dataclass(frozen=True)
class _Served:
    """Everything one bundle version serves with, built completely before it is published.

    A version switch (rollback, update, refresh) replaces the one reference
    to this object; a predict call reads that reference once, so its
    session, classes and input spec always come from the same version,
    whatever another thread switches meanwhile.
    """

    version: str
    manifest: dict[str, Any]
    session: ort.InferenceSession
    labels: tuple[int | str, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (H, W, C)
    input_name: str


def _served_version(store: BundleStore, version: str, manifest: dict[str, Any], *, int8: bool, threads: int | None) -> _Served:
    """Open ``version``'s classifier and check that the manifest describes it; BundleError otherwise.

    The manifest's digest and every file's hash are already verified. What
    is checked here is that the manifest agrees with the ONNX graph (a class
    table one entry short, or an input shape that is not the model's, would
    otherwise open fine and fail in predict), by static shapes and one probe
    run on a blank image.
    """
    where = f"bundle version {version} ({store.version_dir(version)})"
    try:
        classes = manifest["classes"]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, dict) for c in classes):
            raise TypeError("classes must be a non-empty list of objects")
        classes = sorted(classes, key=lambda c: c["index"])
        if [c["index"] for c in classes] != list(range(len(classes))):
            raise ValueError(f"class indices are {[c['index'] for c in classes]}, expected 0..{len(classes) - 1}")
        labels = tuple(c["label"] for c in classes)
        names = tuple(c["name"] for c in classes)
        if not all(isinstance(lab, (int, str)) and not isinstance(lab, bool) for lab in labels) or len(set(labels)) != len(labels):
            raise ValueError(f"class labels {list(labels)[:10]} must be distinct ints or strings")
        if not all(isinstance(n, str) for n in names):
            raise TypeError("class names must be strings")
        spec = manifest["input"]
        raw_shape = spec["shape"]
        if not isinstance(raw_shape, list) or len(raw_shape) != 4 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in raw_shape[1:]
        ):
            raise ValueError(f"input shape is {raw_shape!r}, expected [null, H, W, C] with positive ints")
        shape = (raw_shape[1], raw_shape[2], raw_shape[3])
        if spec.get("dtype", "uint8") != "uint8":
            raise ValueError(f"input dtype is {spec.get('dtype')!r}; this runtime feeds uint8")
        input_name = spec.get("name", "images")
        if not isinstance(input_name, str):
            raise TypeError(f"input name is {input_name!r}")
        files = manifest["files"]
        if GENERATOR in files:
            gen = manifest["generator"]
            norm = manifest["normalization"]
            zdim = gen["zdim"]
            if isinstance(zdim, bool) or not isinstance(zdim, int) or zdim < 1:
                raise ValueError(f"generator zdim is {zdim!r}")
            for key in ("mean", "std"):
                vals = norm[key]
                if not isinstance(vals, list) or len(vals) != shape[2] or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals
                ):
                    raise ValueError(f"normalization {key} is {vals!r}, expected {shape[2]} numbers")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleIntegrityError(f"the manifest of {where} has an unusable classes/input table: {type(e).__name__}: {e}") from None
    name = CLASSIFIER_INT8 if int8 else CLASSIFIER
    if name not in files:
        why = (manifest.get("quantization") or {}).get("warning") or "export with quantize='int8'"
        raise BundleError(f"{where} has no {name}" + (f" ({why})" if int8 else ""))
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    session = open_session(store.version_dir(version) / name, opts, what=f"{name} of {where}")
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if input_name not in inputs or not {"logits", "probabilities"} <= set(outputs):
        raise BundleIntegrityError(
            f"{name} of {where} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the manifest expects input {input_name!r} and outputs logits, probabilities"
        )
    declared = list(inputs[input_name].shape)[1:]
    if len(declared) != 3 or any(isinstance(d, int) and d != s for d, s in zip(declared, shape)):
        raise BundleIntegrityError(
            f"the manifest of {where} says input shape (N, {shape[0]}, {shape[1]}, {shape[2]}), "
            f"but {name} takes {inputs[input_name].shape}"
        )
    for out in ("logits", "probabilities"):
        width = list(outputs[out].shape)[-1]
        if isinstance(width, int) and width != len(labels):
            raise BundleIntegrityError(
                f"the manifest of {where} lists {len(labels)} classes, but {name} outputs {width} {out}"
            )
    try:
        probe = session.run(["logits"], {input_name: np.zeros((1, *shape), np.uint8)})[0]
    except Exception as e:
        raise BundleIntegrityError(f"{name} of {where} does not run on the manifest's input spec: {e}") from None
    if probe.shape != (1, len(labels)):
        raise BundleIntegrityError(
            f"the manifest of {where} lists {len(labels)} classes, but {name} outputs logits shaped {probe.shape}"
        )
    return _Served(version, manifest, session, labels, names, shape, input_name)


@dataclass
class UpdateReport:
    """What a local update did and cost."""

    version: str
    parent_version: str | None
    labels_added: list[int | str]
    names_added: list[str]
    n_images: int
    train_accuracy: float
    seconds_total: float
    seconds_train: float
    seconds_dream: float
    seconds_export: float
    stopped_early: bool
    peak_rss_mb: float
    bundle_mb: float
    privacy: dict[str, Any] | None = None
    learn: dict[str, Any] = field(default_factory=dict, repr=False)
    quality: dict[str, Any] = field(default_factory=dict)  # the quality gate's measurements


class DeviceLearner:
    """A deployment bundle opened on a device. Create with :func:`abd_edge.runtime.open`."""

    def __init__(
        self,
        path: str | Path,
        *,
        keep_versions: int = 3,
        lock_timeout_s: float = 0.0,
        threads: int | None = None,
        int8: bool = False,
        budget: DeviceBudget | None = None,
        quality: "QualityGate | None" = None,
        trusted_keys: Sequence[Any] | None = None,
        signing_key: Any = None,
    ) -> None:
        # Signatures (abd_edge.signing): with trusted_keys, every version served must be signed by one of
        # them; signing_key signs the versions this device makes itself (and is trusted for them).
        self.signing_key = signing_key
        self.trusted_keys = None if trusted_keys is None else [*trusted_keys, *([signing_key] if signing_key is not None else [])]
        self.store = BundleStore(path, keep_versions=keep_versions, lock_timeout_s=lock_timeout_s)
        self.threads = threads
        self.int8 = int8
        self.budget = budget or DeviceBudget()
        self.budget.validate()
        if quality is not None:
            quality.validate()
        self.quality = quality  # None: QualityGate() defaults, built when an update needs it (it imports torch)
        if not self.store.exists():
            raise BundleError(f"{path} holds no bundle (no CURRENT pointer); export one with abd_edge.export.export_bundle")
        self._load(*self.store.read())

    # -------------------------------------------------------------- loading
    def _load(self, version: str, manifest: dict[str, Any]) -> None:
        # Signature and runtime-version checks first, then build the new version completely and
        # publish it with one reference assignment (a concurrent predict sees the old or the new, never a mix).
        if self.trusted_keys is not None:
            verify_version(self.store.version_dir(version), manifest, self.trusted_keys)
        check_onnxruntime(manifest.get("min_onnxruntime"), f"bundle version {version}")
        self._served = _served_version(self.store, version, manifest, int8=self.int8, threads=self.threads)

    def refresh(self) -> bool:
        """Re-open the current version if another process changed it; True if it changed."""
        if self.store.current_version() == self.version:
            return False
        self._load(*self.store.read())
        return True

    @property
    def version(self) -> str:
        return self._served.version

    @property
    def manifest(self) -> dict[str, Any]:
        return self._served.manifest

    @property
    def labels(self) -> list[int | str]:
        return list(self._served.labels)

    @property
    def class_names(self) -> list[str]:
        return list(self._served.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the served version."""
        return self._served.input_shape

    @property
    def version_dir(self) -> Path:
        return self.store.version_dir(self.version)

    @property
    def num_classes(self) -> int:
        return len(self._served.labels)

    # ------------------------------------------------------------ inference
    def input_spec(self, served: _Served | None = None) -> str:
        h, w, c = (served or self._served).input_shape
        return f"uint8 images shaped (N, {h}, {w}, {c}) (NHWC, pixel values 0..255)"

    def _check(self, images: Any, served: _Served) -> np.ndarray:
        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise ImageSpecError(f"images have dtype {x.dtype}; this bundle expects {self.input_spec(served)}")
        if x.shape == served.input_shape:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != served.input_shape:
            raise ImageSpecError(f"images have shape {x.shape}; this bundle expects {self.input_spec(served)}")
        if x.shape[0] == 0:
            raise ImageSpecError(f"no images given; this bundle expects {self.input_spec(served)}")
        return np.ascontiguousarray(x)

    @staticmethod
    def _run(served: _Served, output: str, x: np.ndarray, batch_size: int) -> np.ndarray:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        outs = [served.session.run([output], {served.input_name: x[s : s + batch_size]})[0] for s in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def logits(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        served = self._served
        return self._run(served, "logits", self._check(images, served), batch_size)

    def predict_proba(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        served = self._served
        return self._run(served, "probabilities", self._check(images, served), batch_size)

    def predict(self, images: Any) -> RuntimePrediction:
        served = self._served  # one version from start to end, whatever another thread switches
        probs = self._run(served, "probabilities", self._check(images, served), 256)
        idx = probs.argmax(axis=1)
        return RuntimePrediction(
            idx, [served.labels[i] for i in idx], [served.class_names[i] for i in idx], probs, served.version
        )

    def evaluate(self, images: Any, labels: Sequence[Hashable]) -> float:
        """Top-1 accuracy over all classes of this version; every label must be one it knows."""
        served = self._served
        index = {lab: i for i, lab in enumerate(served.labels)}
        unknown = sorted({str(lab) for lab in labels if lab not in index})
        if unknown:
            raise LabelError(f"labels {unknown} are not classes of bundle version {served.version}; it knows {list(served.labels)}")
        pred = self._run(served, "probabilities", self._check(images, served), 256).argmax(axis=1)
        if len(pred) != len(labels):
            raise LabelError(f"{len(pred)} images but {len(labels)} labels")
        return float(np.mean(pred == np.array([index[lab] for lab in labels])))

    # -------------------------------------------------------------- updates
    def learn_new_classes(
        self,
        local_dataset: Any,
        class_names: Mapping[Hashable, str] | Sequence[str] | None = None,
        *,
        budget: DeviceBudget | None = None,
        method: str | None = None,
        quantize: str | None = None,
        quality: "QualityGate | None" = None,
        show_progress: bool = False,
    ) -> UpdateReport:
        """Learn new classes on the device with dreamed replay; commit a new bundle version atomically.

        The local data stays in memory: it is converted to tensors, trained
        on, and dropped; nothing of it is written under the bundle or to any
        temporary file. The whole update holds the bundle's writer lock, so
        a second runtime on the same directory waits (``lock_timeout_s``) or
        fails with BundleLockedError, and nothing is corrupted.
        ``method`` overrides the bundle's method (e.g. "finetune" for a
        device that updates without replay).

        Before anything is written, the updated model must pass ``quality``
        (default: the gate given to :func:`open`, else ``QualityGate()``):
        finite outputs of a sane scale, accuracy on the new data above a
        floor, old classes not collapsed on dreamed images. A refused update
        raises UpdateRejectedError saying why and leaves the bundle as it was.
        """
        require("torch", "onnx", "onnxscript", "safetensors", feature="a device update (learn_new_classes)")
        if self.trusted_keys is not None and self.signing_key is None:
            raise ConfigError("this device requires signed versions (trusted_keys) but has no signing_key to sign its update with")
        from abd_edge.export.local_update import update_bundle  # the only place the runtime needs torch

        start = time.perf_counter()
        with PeakRSS() as peak:
            upd = update_bundle(self.store, local_dataset, class_names, budget=budget or self.budget, method=method,
                                quantize=quantize, gate=quality or self.quality, sign_key=self.signing_key,
                                show_progress=show_progress)
        self._load(upd.version, upd.export["manifest"])  # verified by the commit, not hashed a third time
        rep = upd.learn
        return UpdateReport(
            version=self.version,
            parent_version=upd.parent_version,
            labels_added=rep.labels_added,
            names_added=rep.names_added,
            n_images=rep.n_images,
            train_accuracy=rep.train_accuracy,
            seconds_total=time.perf_counter() - start,
            seconds_train=rep.train_seconds,
            seconds_dream=rep.dream_seconds,
            seconds_export=upd.seconds_export,
            stopped_early=rep.stopped_early,
            peak_rss_mb=peak.peak_mb,
            bundle_mb=upd.export["bytes"] / 2**20,
            privacy=rep.privacy,
            learn=rep.to_dict(),
            quality=upd.quality,
        )

    def rollback(self, to: str | None = None) -> str:
        """Make the parent version (or ``to``) current again and serve it."""
        version, manifest = self.store.switch(to)  # verified once, under the lock
        self._load(version, manifest)
        return version

    def privacy(self) -> list[dict[str, Any]]:
        """The privacy ledger of this version: one entry per learned task (epsilon "inf" where not private)."""
        return list((self.manifest.get("privacy") or {}).get("ledger", []))

    def history(self) -> list[dict[str, Any]]:
        """Every kept version: version, parent, created, classes, accuracies, seconds, privacy spent."""
        return self.store.history()

    def dream(self, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` dreamed images (normalised space) from generator.onnx, with the classifier's labels for them."""
        served = self._served
        manifest = served.manifest
        if not manifest.get("generator"):
            raise NotFittedError(f"bundle version {served.version} has no generator (its method trains none, or it is serving-only)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an int >= 1, got {n!r}")
        h, w, c = served.input_shape
        vdir = self.store.version_dir(served.version)
        if GENERATOR in manifest["files"]:
            gen = open_session(vdir / GENERATOR, what=f"{GENERATOR} of bundle version {served.version}")
            try:
                zdim = int(manifest["generator"]["zdim"])
                z = np.random.default_rng(seed).standard_normal((n, zdim)).astype(np.float32)
                images = gen.run(["images"], {"z": z})[0]
            except Exception as e:  # onnxruntime's own exception classes
                raise BundleIntegrityError(f"{GENERATOR} of bundle version {served.version} does not run as its manifest says: {e}") from None
        else:  # exported with generator_onnx=False: the generator travels once, as the learner's weights
            require("torch", "safetensors", feature=f"dreaming from bundle version {served.version} (it has no {GENERATOR})")
            from abd_edge.learner import Learner

            images = Learner.load(vdir / LEARNER_DIR, device="cpu").dream(n, seed=seed)[0].numpy()
        if images.shape != (n, c, h, w):
            raise BundleIntegrityError(
                f"the generator of bundle version {served.version} makes images shaped {images.shape}, expected {(n, c, h, w)}"
            )
        pixels = to_pixels(images, manifest["normalization"]["mean"], manifest["normalization"]["std"])
        probs = self._run(served, "probabilities", pixels, 256)
        return pixels, probs.argmax(axis=1)


def to_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised NCHW float images -> uint8 NHWC pixels (the classifier's input contract)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    x = np.clip(images * s + m, 0.0, 1.0)
    return np.ascontiguousarray((np.rint(x * 255)).astype(np.uint8).transpose(0, 2, 3, 1))
