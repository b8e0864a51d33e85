"""The device side: serve a bundle with ONNX Runtime and fold in new classes locally.

Prediction needs only numpy and onnxruntime (:mod:`abd_edge.runtime.serving`).
torch is imported inside :meth:`DeviceLearner.learn_new_classes` (and by
:meth:`DeviceLearner.dream` when the bundle carries no ``generator.onnx``)
and nowhere else, so a device that only serves predictions never loads it.

Opening a version hashes what serving reads (the manifest through its
digest, the classifier); the learner state and the generator are hashed
when first used, once per opened version, so a serving device never
spends seconds hashing a 32 MB generator it does not run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from abd_edge.bundle_schema import GENERATOR_ONNX as GENERATOR
from abd_edge.bundle_schema import LEARNER_DIR, Manifest, session_options
from abd_edge.bundle_store import BundleStore
from abd_edge.errors import BundleError, BundleIntegrityError, ConfigError, LabelError, NotFittedError
from abd_edge.extras import require
from abd_edge.memory_budget import check_max_memory_mb
from abd_edge.onnx_compat import check_onnxruntime, open_session
from abd_edge.resources import PeakRSS
from abd_edge.signing import verify_version

from .serving import RuntimePrediction, Served, open_version, served_file, to_pixels

if TYPE_CHECKING:
    from abd_edge.export.quality import QualityGate

__all__ = ["DeviceBudget", "DeviceLearner", "RuntimePrediction", "UpdateReport", "to_pixels"]

log = logging.getLogger(__name__)


@dataclass
class DeviceBudget:
    """What one local update may spend. Defaults: the engine's short-budget recipe cut to fit a device.

    One epoch over the local data and 40 dreaming iterations fold a
    cifar10-5x2 task (10,000 images of 2 classes) into the model in about
    2.5 minutes on one core of a loaded 2-core machine (bf16; see
    docs/DEPLOYMENT.md, "The device budget").
    ``time_budget_s`` stops training (and then dreaming) early when reached;
    the report says so.

    ``max_memory_mb`` caps the update's peak resident memory (the whole
    process's, in MiB): training and dreaming then run their batches in
    micro-batches with gradients accumulated (same effective batch), sized
    from what the process holds when the update starts, and dreaming's
    sized again from what it holds when dreaming starts
    (abd_edge/memory_budget.py). An update that cannot fit even small
    micro-batches raises MemoryBudgetError before anything changes; the
    report gives the measured peak and whether it stayed within the cap.
    None (the default): no cap, whole batches. No default cap because what a
    process holds before an update (the torch build, the app's own data)
    is the app's, not the library's, to know; a device app sets it (1,400 MiB
    held the cifar10 update of docs/DEPLOYMENT.md with the torch CUDA wheel;
    1,150 was refused before training).
    """

    epochs: int = 1
    dream_iterations: int = 40
    batch_size: int | None = None  # None: the learner's own
    threads: int | None = None
    time_budget_s: float | None = None
    privacy: Any = None  # a PrivacyConfig (or its dict): DP updates; its epochs/batch_size/lr, if set, replace the above
    max_memory_mb: float | None = None
    # Dreamed replay drawn once as this many batches and reused (ReplaySampler); None: the bundle's setting (0: fresh
    # draws every step, the paper). 32 on cifar10: training 20% faster, +120 MiB (docs/DEPLOYMENT.md); not the default.
    replay_pool_batches: int | None = None

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
        check_max_memory_mb(self.max_memory_mb)
        p = self.replay_pool_batches
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 0):
            raise ConfigError(f"replay_pool_batches must be None (the bundle's) or an int >= 0, got {p!r}")
        if self.privacy is not None:
            from abd_edge.privacy.config import PrivacyConfig

            if isinstance(self.privacy, dict):
                self.privacy = PrivacyConfig.from_dict(self.privacy)
            if not isinstance(self.privacy, PrivacyConfig):
                raise ConfigError(f"privacy must be a PrivacyConfig, a dict of one, or None, got {type(self.privacy).__name__}")
            self.privacy.validate()


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
    memory: dict[str, Any] = field(default_factory=dict)  # the memory budget's plan (micro-batches, MiB held at start)
    budget_respected: bool | None = None  # peak_rss_mb <= budget.max_memory_mb; None without a cap


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
        self._load(*self.store.read(hashes=self._serving_files), verified=self._serving_files)

    # -------------------------------------------------------------- loading
    @property
    def _serving_files(self) -> frozenset[str]:
        """What serving reads, hashed at every open; the rest of a version is hashed when first used."""
        return frozenset({served_file(self.int8)})

    def _load(self, version: str, manifest: Mapping[str, Any], verified: Iterable[str] | None = None) -> None:
        """Publish ``version``, whose ``verified`` files were hashed just now (None: all of them, e.g. the
        version this process has just written and hashed). Signature and runtime checks come first; the new
        version is built completely and published with one reference assignment (a concurrent predict sees
        the old or the new, never a mix)."""
        raw = dict(manifest)
        vdir = self.store.version_dir(version)
        if self.trusted_keys is not None:
            verify_version(vdir, raw, self.trusted_keys)  # signed: the manifest exactly as written
        typed = Manifest.from_dict(raw, f"the manifest of bundle version {version} ({vdir})")
        check_onnxruntime(typed.min_onnxruntime, f"bundle version {version}")
        self._served = open_version(vdir, version, typed, raw, int8=self.int8, threads=self.threads,
                                    verified=typed.files if verified is None else verified)

    def refresh(self) -> bool:
        """Re-open the current version if another process changed it; True if it changed."""
        if self.store.current_version() == self.version:
            return False
        self._load(*self.store.read(hashes=self._serving_files), verified=self._serving_files)
        return True

    @property
    def version(self) -> str:
        return self._served.version

    @property
    def manifest(self) -> Manifest:
        """The served version's manifest, typed (``manifest.to_dict()`` for its JSON form)."""
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
    def input_spec(self, served: Served | None = None) -> str:
        return (served or self._served).input_spec()

    def logits(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        served = self._served
        return served.run(served.manifest.tensors.logits, served.check_images(images), batch_size)

    def predict_proba(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        served = self._served
        return served.run(served.manifest.tensors.probabilities, served.check_images(images), batch_size)

    def predict(self, images: Any) -> RuntimePrediction:
        served = self._served  # one version from start to end, whatever another thread switches
        probs = served.run(served.manifest.tensors.probabilities, served.check_images(images))
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
        pred = served.run(served.manifest.tensors.probabilities, served.check_images(images)).argmax(axis=1)
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
        cap = upd.memory.max_memory_mb
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
            memory=upd.memory.to_dict(),
            budget_respected=None if cap is None else peak.peak_mb <= cap,
        )


    def rollback(self, to: str | None = None) -> str:
        """Make the parent version (or ``to``) current again and serve it."""
        version, manifest = self.store.switch(to, hashes=self._serving_files)  # verified once, under the lock
        self._load(version, manifest, verified=self._serving_files)
        return version

    def privacy(self) -> list[dict[str, Any]]:
        """The privacy ledger of this version: one entry per learned task (epsilon "inf" where not private)."""
        return self.manifest.privacy_ledger

    def history(self) -> list[dict[str, Any]]:
        """Every kept version: version, parent, created, classes, accuracies, seconds, privacy spent."""
        return self.store.history()

    def dream(self, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` dreamed images as uint8 pixels, with the classifier's labels for them.

        From ``generator.onnx`` when the bundle carries it (ONNX Runtime only);
        otherwise from the generator weights in ``learner/`` through torch
        (the default bundle carries the generator once; on a torch-free
        install this raises MissingDependencyError naming the extra). The
        generator's files are hashed on first use.
        """
        served = self._served
        manifest = served.manifest
        if manifest.generator is None:
            raise NotFittedError(f"bundle version {served.version} has no generator (its method trains none, or it is serving-only)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an int >= 1, got {n!r}")
        h, w, c = served.input_shape
        if manifest.generator.onnx:
            served.ensure_verified([GENERATOR])
            gen = open_session(served.directory / GENERATOR, session_options(self.threads),
                               what=f"{GENERATOR} of bundle version {served.version}")
            names = manifest.tensors
            try:
                z = np.random.default_rng(seed).standard_normal((n, manifest.generator.zdim)).astype(np.float32)
                images = gen.run([names.generator_output], {names.generator_input: z})[0]
            except Exception as e:  # onnxruntime's own exception classes
                raise BundleIntegrityError(f"{GENERATOR} of bundle version {served.version} does not run as its manifest says: {e}") from None
        else:  # the default: the generator travels once, as the learner's weights
            require("torch", "safetensors", feature=f"dreaming from bundle version {served.version} (it has no {GENERATOR})")
            from abd_edge.learner import Learner

            served.ensure_verified(manifest.learner_files())
            images = Learner.load(served.directory / LEARNER_DIR, device="cpu", hashes=False).dream(n, seed=seed)[0].numpy()
        if images.shape != (n, c, h, w):
            raise BundleIntegrityError(
                f"the generator of bundle version {served.version} makes images shaped {images.shape}, expected {(n, c, h, w)}"
            )
        pixels = to_pixels(images, manifest.mean, manifest.std)
        probs = served.run(manifest.tensors.probabilities, pixels)
        return pixels, probs.argmax(axis=1)
