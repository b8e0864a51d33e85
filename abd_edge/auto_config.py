"""Data-aware defaults: the settings that depend on the images, settled by the learner itself.

The paper's recipe is tuned for CIFAR (32x32 RGB photos, 10,000 images per
task). Applied unchanged to other data it quietly breaks: a 4-pixel crop
padding moves an 8x8 digit half out of the frame, a horizontal flip turns a
handwritten 2 into something that is not a 2, and a batch of 128 on the 280
images of a small task leaves three optimizer steps per epoch. Before this
module those fixes lived in the benchmark (``bench.learner_config``), so the
library called directly scored 48% on two-class digits tasks.

Every such setting defaults to ``"auto"`` in the config; an explicit value
always wins. The rules (all give the paper's values on CIFAR):

* ``augment.crop_padding``: an eighth of the image side, rounded (32 -> 4,
  16 -> 2, 8 -> 1): the reference pads 4 pixels at 32, i.e. shifts of up to
  an eighth of the frame.
* ``augment.flip``: on for colour images of side >= 16 (photos, where a
  mirrored scene is still the same scene); off for grey or tiny images,
  which are usually glyphs, digits or sensor maps whose mirror image means
  something else. Grey content stored as RGB (all three channels equal in
  every image checked, as in scans or digits saved as RGB files) counts as
  grey: scikit-learn digits upscaled to 32x32 RGB with flips on learned a
  7-vs-8 task to 86.5% in 5 epochs and ABD ended at 48.1% after a second
  task, behind LwF.MC and fine-tune; with flips off the first task reached
  98.9% (benchmarks/generalisation.py). Set it explicitly when you know better.
* ``augment.brightness`` / ``contrast``: the reference's jitter (63/255,
  0.8) for images of side >= 16; none for smaller ones, whose few pixels
  carry the class in their intensities.
* ``dream.batch_size``: 128 (the paper). The class-balance and BN-statistics
  terms of the inversion losses are batch statistics: a smaller batch makes
  them noisy, and at 8x8 a dreaming step is cheap anyway.
* ``first_task.grad_clip_norm`` / ``later_tasks.grad_clip_norm``: 1.0 on
  tasks of fewer than 1,024 images, off (the paper) on larger ones; settled
  per call like the batch size (:func:`auto_grad_clip` says why).
* ``first_task.batch_size`` / ``later_tasks.batch_size``: the largest power
  of two in [16, 128] that still gives at least ``MIN_STEPS_PER_EPOCH``
  steps per epoch over the call's images. Unlike the others it is settled
  per call (a device update may bring far fewer images than the server's
  first task); the rule is kept in the config, the value is reported.

The shape-dependent settings are settled once, at the first
``learn_new_classes``, written into the learner's config together with what
they were settled from (``LearnerConfig.data_settings``), saved with the
learner and reused by every later call and device update.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .config import AUTO, AugmentConfig, DreamConfig, LearnerConfig, TrainConfig

__all__ = ["MIN_STEPS_PER_EPOCH", "auto_batch_size", "content_channels", "settle_for_data", "settle_for_call"]

MIN_STEPS_PER_EPOCH = 8
MIN_BATCH, MAX_BATCH = 16, 128
PAPER_BRIGHTNESS, PAPER_CONTRAST = 63 / 255, 0.8
PAPER_DREAM_BATCH = 128
SMALL_TASK_CLIP = 1.0
GREY_CHECK_IMAGES = 256


def _auto(v: Any) -> bool:
    return isinstance(v, str) and v == AUTO


def auto_batch_size(n_images: int) -> int:
    """Largest power of two in [16, 128] with at least MIN_STEPS_PER_EPOCH batches over ``n_images``.

    280 images -> 32 (8 steps), 2,500 -> 128, 100 -> 16.
    """
    b = MAX_BATCH
    while b > MIN_BATCH and n_images / b < MIN_STEPS_PER_EPOCH:
        b //= 2
    return b


def auto_grad_clip(n_images: int) -> float | None:
    """Clip the gradient norm at 1 on small tasks (fewer than 128 * MIN_STEPS_PER_EPOCH images), else off.

    On small tasks (a few hundred images of two classes) the first optimizer
    steps of a fresh or grown network produce gradients tens of times larger
    than later ones, and at lr 0.1 they blow the weights up: the digits
    classifier after one two-class task gave logits of about 50 and
    penultimate features of norm 19. ABD's feature distillation then started
    at 170-375 instead of below 1, swamped the new classes' cross-entropy,
    and the update forgot the old classes (seed 0: 9% on the old classes,
    37% over four). Clipping at 1 kept those first steps sane (94% over four
    with the same budget). On CIFAR-sized tasks the paper's unclipped recipe
    is kept as published. The clip itself is the training setup's step
    (``engine.TrainingSetup``), between backward and the optimizer step.
    """
    return SMALL_TASK_CLIP if n_images < MAX_BATCH * MIN_STEPS_PER_EPOCH else None


def content_channels(images: torch.Tensor, max_images: int = GREY_CHECK_IMAGES) -> int:
    """1 for grey content stored in 3 channels (R == G == B in each of up to ``max_images`` images), else C.

    Images are spread over the whole set (every k-th), so a set of grey
    images with a few colour ones late in the order is still seen as colour.
    """
    c = int(images.shape[1])
    if c != 3 or images.shape[0] == 0:
        return c
    step = max(1, images.shape[0] // max_images)
    sample = images[::step][:max_images]
    grey = torch.equal(sample[:, 0], sample[:, 1]) and torch.equal(sample[:, 1], sample[:, 2])
    return 1 if grey else 3


def auto_augment(channels: int, size: int) -> dict[str, Any]:
    photo = size >= 16
    return {
        "crop_padding": int(round(size / 8)),
        "flip": bool(channels == 3 and photo),
        "brightness": PAPER_BRIGHTNESS if photo else 0.0,
        "contrast": PAPER_CONTRAST if photo else 0.0,
    }


def settle_for_data(cfg: LearnerConfig, image_shape: tuple[int, int, int], n_images: int,
                    content: int | None = None) -> LearnerConfig:
    """A copy of ``cfg`` with its shape-dependent "auto" settings settled; ``cfg`` is untouched.

    Called at the first task. ``content`` is :func:`content_channels` of the
    task's images (default: the stored channels). Batch sizes stay "auto"
    (settled per call by :func:`settle_for_call`); a config already settled
    is returned as a copy.
    """
    c, h, _w = image_shape
    content = c if content is None else content
    chosen = auto_augment(content, h)
    settled: dict[str, Any] = {}
    aug_values = {}
    for f in dataclasses.fields(AugmentConfig):
        v = getattr(cfg.augment, f.name)
        if _auto(v):
            v = chosen[f.name]
            settled[f"augment.{f.name}"] = v
        aug_values[f.name] = v
    dream = cfg.dream
    if _auto(dream.batch_size):
        dream = dataclasses.replace(dream, batch_size=PAPER_DREAM_BATCH)
        settled["dream.batch_size"] = PAPER_DREAM_BATCH
    data_settings = dict(cfg.data_settings)
    if settled or not data_settings:
        data_settings = {"image_shape": list(image_shape), "n_images": int(n_images),
                         "content_channels": int(content),
                         "settings": {**data_settings.get("settings", {}), **settled}}
    return dataclasses.replace(cfg, augment=AugmentConfig(**aug_values), dream=dream, data_settings=data_settings)


def settle_for_call(cfg: LearnerConfig, n_images: int) -> tuple[LearnerConfig, dict[str, Any]]:
    """The config one call trains with (every setting concrete) and the values settled for it.

    ``cfg`` must be settled for the data already (:func:`settle_for_data`).
    """
    per_call: dict[str, Any] = {}
    phases: dict[str, TrainConfig] = {}
    for name in ("first_task", "later_tasks"):
        t: TrainConfig = getattr(cfg, name)
        if _auto(t.batch_size):
            t = dataclasses.replace(t, batch_size=auto_batch_size(n_images))
            per_call[f"{name}.batch_size"] = t.batch_size
        if _auto(t.grad_clip_norm):
            t = dataclasses.replace(t, grad_clip_norm=auto_grad_clip(n_images))
            per_call[f"{name}.grad_clip_norm"] = t.grad_clip_norm
        phases[name] = t
    dream: DreamConfig = cfg.dream
    if _auto(dream.batch_size):  # a config never settled for data (e.g. built by hand between calls)
        dream = dataclasses.replace(dream, batch_size=PAPER_DREAM_BATCH)
        per_call["dream.batch_size"] = PAPER_DREAM_BATCH
    if not cfg.augment.is_resolved:
        raise ValueError("settle_for_call needs a config settled for the data: call settle_for_data first")
    return dataclasses.replace(cfg, dream=dream, **phases), per_call


def resolved_settings(cfg: LearnerConfig, per_call: dict[str, Any]) -> dict[str, Any]:
    """Every data-dependent value a call used, with where it came from: for the report."""
    out: dict[str, Any] = {}
    auto_keys = set(cfg.data_settings.get("settings", {})) | set(per_call)
    for key in ("augment.crop_padding", "augment.flip", "augment.brightness", "augment.contrast",
                "dream.batch_size", "first_task.batch_size", "later_tasks.batch_size",
                "first_task.grad_clip_norm", "later_tasks.grad_clip_norm"):
        group, name = key.split(".")
        value = per_call.get(key, getattr(getattr(cfg, group), name))
        out[key] = {"value": value, "source": "auto" if key in auto_keys else "explicit"}
    return out
