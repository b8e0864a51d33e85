"""One local update of a bundle: load its learner, learn on a budget, check, export, commit.

The device runtime (``DeviceLearner.learn_new_classes``) and the device
simulation (``abd-edge simulate``) both update bundles through
:func:`update_bundle`, so a budget means the same settings everywhere and
every update passes the same quality gate before it is committed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Protocol, Sequence

import torch

from abd_edge.auto_config import PAPER_DREAM_BATCH, auto_batch_size
from abd_edge.bundle_format import CLASSIFIER_ONNX, GENERATOR_ONNX, LEARNER_DIR, fault_point
from abd_edge.bundle_store import BundleStore
from abd_edge.class_statistics import backbone_fingerprint
from abd_edge.config import LearnerConfig
from abd_edge.data.adapters import as_labeled_images
from abd_edge.errors import BundleError
from abd_edge.learner import Learner
from abd_edge.memory_budget import MemoryPlan, plan_memory, pool_mb
from abd_edge.reports import LearnReport
from abd_edge.resources import current_rss_bytes, release_memory

from .bundle import export_bundle
from .quality import QualityGate, check_update, dream_old_classes

NO_CAP = MemoryPlan(None, None, None, None)  # a plan without micro-batches (no memory cap)

__all__ = ["UpdateBudget", "LocalUpdate", "budget_overrides", "memory_plan", "update_bundle"]


class UpdateBudget(Protocol):
    """What one update may spend (``abd_edge.runtime.DeviceBudget`` is one; this layer cannot import it)."""

    epochs: int
    dream_iterations: int
    batch_size: int | None
    threads: int | None
    time_budget_s: float | None
    max_memory_mb: float | None
    replay_pool_batches: int | None
    privacy: Any  # a PrivacyConfig or None

    def validate(self) -> None: ...


def budget_overrides(config: LearnerConfig, budget: UpdateBudget, plan: MemoryPlan | None = None,
                     n_images: int | None = None) -> dict[str, Any]:
    """The ``Learner.reconfigure`` settings a budget stands for: later-task epochs and batch, dreaming iterations,
    the replay pool (with ``n_images``: at most one batch per training step), and the micro-batches of a memory
    ``plan`` (:func:`memory_plan`).

    The one place a budget becomes a learner configuration (the device
    update and the simulation's engine comparison both use it).
    """
    later = dataclasses.replace(config.later_tasks, epochs=budget.epochs,
                                batch_size=budget.batch_size or config.later_tasks.batch_size,
                                micro_batch=plan.train_micro_batch if plan else config.later_tasks.micro_batch)
    dream = dataclasses.replace(config.dream, iterations=budget.dream_iterations,
                                micro_batch=plan.dream_micro_batch if plan else config.dream.micro_batch,
                                max_memory_mb=budget.max_memory_mb)  # dreaming re-plans from what it finds held
    pool = config.replay_pool_batches if budget.replay_pool_batches is None else budget.replay_pool_batches
    if n_images is not None and isinstance(later.batch_size, int):  # never more batches than the update will replay
        pool = min(pool, later.epochs * math.ceil(n_images / later.batch_size))
    return {"later_tasks": later, "dream": dream, "replay_pool_batches": pool}


def trains_nothing(budget: UpdateBudget) -> bool:
    """An update whose head is set in closed form (the class-mean release of the whole budget) and that does not dream."""
    return budget.dream_iterations == 0 and budget.privacy is not None and budget.privacy.release_only


def memory_plan(learner: Learner, budget: UpdateBudget, n_images: int, replays: bool) -> MemoryPlan:
    """The micro-batches that fit ``budget.max_memory_mb`` on top of what this process holds now.

    Called with the learner loaded (and the C heap trimmed), so what is held
    includes the process, the local data and the learner's state.
    """
    if budget.max_memory_mb is None:
        return NO_CAP
    release_memory()
    held = current_rss_bytes()
    if trains_nothing(budget):
        # No batch to split: the update is inference passes (EVAL_BATCH rows) and a closed-form head; the
        # training and dreaming costs the plan models do not arise. Whether the cap held is reported after.
        return MemoryPlan(budget.max_memory_mb, None if held is None else held / 2**20, None, None)
    cfg = learner.config
    batch = budget.batch_size or cfg.later_tasks.batch_size
    batch = auto_batch_size(n_images) if not isinstance(batch, int) else batch
    dream_batch = cfg.dream.batch_size if isinstance(cfg.dream.batch_size, int) else PAPER_DREAM_BATCH
    c, h, w = learner.input_shape or (1, 32, 32)
    pool = budget_overrides(cfg, budget, n_images=n_images)["replay_pool_batches"]
    return plan_memory(budget.max_memory_mb, None if held is None else held / 2**20,
                       train_rows=batch * (2 if replays else 1), dream_batch=dream_batch, pixels=h * w,
                       pool_mb=pool_mb(pool * batch, c, h * w) if replays else 0.0)


@dataclass
class LocalUpdate:
    """What :func:`update_bundle` committed."""

    parent_version: str  # the version the update started from
    learn: LearnReport
    quality: dict[str, Any]  # the quality gate's measurements
    export: dict[str, Any]  # export_bundle's result: version, bytes, files, manifest, ...
    seconds_export: float
    memory: MemoryPlan  # the micro-batches the memory budget chose

    @property
    def version(self) -> str:
        return self.export["version"]


def update_bundle(
    store: BundleStore,
    dataset: Any,
    class_names: Mapping[Hashable, str] | Sequence[str] | None = None,
    *,
    budget: UpdateBudget,
    method: str | None = None,
    quantize: str | None = None,
    gate: QualityGate | None = None,
    sign_key: Any = None,
    show_progress: bool = False,
) -> LocalUpdate:
    """Learn ``dataset``'s new classes on the bundle's current version and commit the result as a new version.

    Holds the store's writer lock throughout, so the version updated is the
    current one and nobody commits in between. ``method`` overrides the
    bundle's method (e.g. "finetune"). ``budget.privacy`` makes the update
    differentially private. Before anything is written the updated model
    must pass ``gate`` (default ``QualityGate()``); a refused update raises
    UpdateRejectedError and leaves the bundle as it was. The local data is
    converted to tensors in memory, trained on and dropped; none of it is
    written anywhere.
    """
    budget.validate()
    gate = gate or QualityGate()
    gate.validate()
    data = as_labeled_images(dataset)  # converted once: trained on, then a sample checks the result
    with store.lock():
        parent, manifest = store.read()  # the current version under the lock (another device may have moved it)
        if manifest.get("serve_only") or not any(f.startswith(LEARNER_DIR + "/") for f in manifest["files"]):
            raise BundleError(
                f"bundle version {parent} is serving-only (exported with serve_only / --serve-only): it has no "
                "learner state to update; deploy an updatable bundle to learn on the device"
            )
        # store.read() has just hashed every file of this immutable version, learner/ included.
        learner = Learner.load(store.version_dir(parent) / LEARNER_DIR, device="cpu", hashes=False)
        if method:
            learner.reconfigure(method=method)
        plan = memory_plan(learner, budget, len(data), learner.method.uses_replay)  # MemoryBudgetError: nothing changed
        later_before, dream_before = learner.config.later_tasks, learner.config.dream
        learner.reconfigure(**budget_overrides(learner.config, budget, plan, n_images=len(data)))
        threads_before = torch.get_num_threads()
        if budget.threads is not None:
            torch.set_num_threads(budget.threads)
        try:
            n_old = learner.num_classes
            backbone_before = backbone_fingerprint(learner.model)
            replays = learner.method.uses_replay
            old_dreamed = dream_old_classes(learner, gate, seed=learner.tasks_learned) if replays else None
            rep = learner.learn_new_classes(data, class_names, time_budget_s=budget.time_budget_s,
                                            show_progress=show_progress, privacy=budget.privacy)
            private = bool(rep.privacy and rep.privacy.get("private"))
            quality = check_update(
                learner, new_images=None if private else data.images,
                train_accuracy=None if private else rep.train_accuracy, n_old=n_old,
                old_dreamed=old_dreamed, gate=gate,
            )
            if not replays:
                quality["old_class_share"] = f"not checked: method {learner.config.method!r} does not replay"
        finally:
            torch.set_num_threads(threads_before)
        del data
        release_memory()  # training's and dreaming's freed memory back to the system before the export allocates
        # The plan fitted this device's memory at this moment: the exported learner's config drops its micro-batches
        # and keeps everything else this update trained with (the budget's epochs, iterations, replay pool).
        cfg = learner.config
        learner.reconfigure(later_tasks=dataclasses.replace(cfg.later_tasks, micro_batch=later_before.micro_batch),
                            dream=dataclasses.replace(cfg.dream, micro_batch=dream_before.micro_batch,
                                                      max_memory_mb=dream_before.max_memory_mb))
        if plan.max_memory_mb is not None and rep.dream_iterations:
            plan = dataclasses.replace(plan, dream_micro_batch=rep.dream_micro_batch)  # what dreaming ran with
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
            "quality": quality,
        }
        # An update that set only the head (the class-mean release) keeps the backbone bit for bit: the new
        # version's classifier is the parent's with its head rewritten, without torch's exporter (docs/DEPLOYMENT.md).
        same_backbone = backbone_fingerprint(learner.model) == backbone_before
        info = export_bundle(learner, store, summary=summary, quantize=quantize, sign_key=sign_key,
                             generator_onnx=GENERATOR_ONNX in manifest["files"],  # keep the bundle's shape
                             previous_classifier=store.version_dir(parent) / CLASSIFIER_ONNX if same_backbone else None)
        return LocalUpdate(parent, rep, quality, info, time.perf_counter() - t_export, plan)
