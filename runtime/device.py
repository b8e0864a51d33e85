"""The device side: serve a bundle with ONNX Runtime and fold in new classes locally.

Prediction needs only numpy and onnxruntime. torch is imported inside
:meth:`DeviceLearner.learn_new_classes` and nowhere else, so a device that
only serves predictions never loads it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from abd_edge.bundle_format import CLASSIFIER_INT8_ONNX as CLASSIFIER_INT8
from abd_edge.bundle_format import CLASSIFIER_ONNX as CLASSIFIER
from abd_edge.bundle_format import GENERATOR_ONNX as GENERATOR
from abd_edge.bundle_format import LEARNER_DIR, fault_point
from abd_edge.bundle_store import BundleStore
from abd_edge.errors import BundleError, ConfigError, ImageSpecError, LabelError, NotFittedError
from abd_edge.resources import PeakRSS

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
    ) -> None:
        self.store = BundleStore(path, keep_versions=keep_versions, lock_timeout_s=lock_timeout_s)
        self.threads = threads
        self.int8 = int8
        self.budget = budget or DeviceBudget()
        self.budget.validate()
        if not self.store.exists():
            raise BundleError(f"{path} holds no bundle (no CURRENT pointer); export one with abd_edge.export.export_bundle")
        self._load(*self.store.read())

    # -------------------------------------------------------------- loading
    def _load(self, version: str, manifest: dict[str, Any]) -> None:
        try:
            classes = sorted(manifest["classes"], key=lambda c: c["index"])
            spec = manifest["input"]
            shape = tuple(int(s) for s in spec["shape"][1:])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest of version {version} lacks a usable classes/input table: {e}") from None
        name = CLASSIFIER_INT8 if self.int8 else CLASSIFIER
        if name not in manifest["files"]:
            raise BundleError(f"version {version} has no {name}" + (" (export with quantize='int8')" if self.int8 else ""))
        opts = ort.SessionOptions()
        if self.threads is not None:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(self.store.version_dir(version) / name), opts, providers=["CPUExecutionProvider"])
        # Swap in everything at once, only after the new session exists.
        self._session = session
        self.version = version
        self.manifest = manifest
        self.labels: list[int | str] = [c["label"] for c in classes]
        self.class_names: list[str] = [c["name"] for c in classes]
        self.input_shape: tuple[int, ...] = shape  # (H, W, C)
        self._input_name = spec.get("name", "images")

    def refresh(self) -> bool:
        """Re-open the current version if another process changed it; True if it changed."""
        if self.store.current_version() == self.version:
            return False
        self._load(*self.store.read())
        return True

    @property
    def version_dir(self) -> Path:
        return self.store.version_dir(self.version)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------ inference
    def input_spec(self) -> str:
        h, w, c = self.input_shape
        return f"uint8 images shaped (N, {h}, {w}, {c}) (NHWC, pixel values 0..255)"

    def _check(self, images: Any) -> np.ndarray:
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

    def logits(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        x = self._check(images)
        outs = [self._session.run(["logits"], {self._input_name: x[s : s + batch_size]})[0] for s in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def predict_proba(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        x = self._check(images)
        outs = [self._session.run(["probabilities"], {self._input_name: x[s : s + batch_size]})[0] for s in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def predict(self, images: Any) -> RuntimePrediction:
        probs = self.predict_proba(images)
        idx = probs.argmax(axis=1)
        return RuntimePrediction(idx, [self.labels[i] for i in idx], [self.class_names[i] for i in idx], probs)

    def evaluate(self, images: Any, labels: Sequence[Hashable]) -> float:
        """Top-1 accuracy over all classes of this version; every label must be one it knows."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        unknown = sorted({str(lab) for lab in labels if lab not in index})
        if unknown:
            raise LabelError(f"labels {unknown} are not classes of bundle version {self.version}; it knows {self.labels}")
        pred = self.predict_proba(images).argmax(axis=1)
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
        """
        import torch  # the only place the runtime needs torch

        from abd_edge.export.bundle import export_bundle
        from abd_edge.learner import Learner

        b = budget or self.budget
        b.validate()
        start = time.perf_counter()
        with PeakRSS() as peak, self.store.lock():
            version, manifest = self.store.read()  # the current version under the lock (another device may have moved it)
            learner = Learner.load(self.store.version_dir(version) / LEARNER_DIR, device="cpu")
            cfg = learner.config
            later = dataclasses.replace(cfg.later_tasks, epochs=b.epochs, batch_size=b.batch_size or cfg.later_tasks.batch_size)
            dream = dataclasses.replace(cfg.dream, iterations=b.dream_iterations)
            learner.reconfigure(later_tasks=later, dream=dream, **({"method": method} if method else {}))
            threads_before = torch.get_num_threads()
            if b.threads is not None:
                torch.set_num_threads(b.threads)
            try:
                rep = learner.learn_new_classes(local_dataset, class_names, time_budget_s=b.time_budget_s,
                                                show_progress=show_progress, privacy=b.privacy)
            finally:
                torch.set_num_threads(threads_before)
            fault_point("update_trained")
            t_export = time.perf_counter()
            summary = {
                "update": "local",
                "labels_added": rep.labels_added,
                "names_added": rep.names_added,
                "n_classes": learner.num_classes,
                "train_accuracy": rep.train_accuracy,
                "seconds_train": rep.train_seconds,
                "seconds_dream": rep.dream_seconds,
                "stopped_early": rep.stopped_early,
                "privacy_spent": rep.privacy,
            }
            info = export_bundle(learner, self.store, summary=summary, quantize=quantize)
            seconds_export = time.perf_counter() - t_export
            del learner
        self._load(*self.store.read(info["version"]))
        return UpdateReport(
            version=self.version,
            parent_version=version,
            labels_added=rep.labels_added,
            names_added=rep.names_added,
            n_images=rep.n_images,
            train_accuracy=rep.train_accuracy,
            seconds_total=time.perf_counter() - start,
            seconds_train=rep.train_seconds,
            seconds_dream=rep.dream_seconds,
            seconds_export=seconds_export,
            stopped_early=rep.stopped_early,
            peak_rss_mb=peak.peak_mb,
            bundle_mb=info["bytes"] / 2**20,
            privacy=rep.privacy,
            learn=rep.to_dict(),
        )

    def rollback(self, to: str | None = None) -> str:
        """Make the parent version (or ``to``) current again and serve it."""
        version = self.store.rollback(to)
        self._load(*self.store.read(version))
        return version

    def privacy(self) -> list[dict[str, Any]]:
        """The privacy ledger of this version: one entry per learned task (epsilon "inf" where not private)."""
        return list((self.manifest.get("privacy") or {}).get("ledger", []))

    def history(self) -> list[dict[str, Any]]:
        """Every kept version: version, parent, created, classes, accuracies, seconds, privacy spent."""
        return self.store.history()

    def dream(self, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` dreamed images (normalised space) from generator.onnx, with the classifier's labels for them."""
        if GENERATOR not in self.manifest["files"]:
            raise NotFittedError(f"bundle version {self.version} has no generator (its method trains none)")
        gen = ort.InferenceSession(str(self.version_dir / GENERATOR), providers=["CPUExecutionProvider"])
        zdim = int(self.manifest["generator"]["zdim"])
        z = np.random.default_rng(seed).standard_normal((n, zdim)).astype(np.float32)
        images = gen.run(["images"], {"z": z})[0]
        pixels = to_pixels(images, self.manifest["normalization"]["mean"], self.manifest["normalization"]["std"])
        return pixels, self.predict_proba(pixels).argmax(axis=1)


def to_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised NCHW float images -> uint8 NHWC pixels (the classifier's input contract)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    x = np.clip(images * s + m, 0.0, 1.0)
    return np.ascontiguousarray((np.rint(x * 255)).astype(np.uint8).transpose(0, 2, 3, 1))
