import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ABD_EDGE_PROGRESS", "0")
REPO = Path(__file__).resolve().parents[1]


def tiny_config(method: str = "abd", **overrides):
    """A learner small enough for a CPU unit test: a few SGD steps, a few dreaming steps."""
    from abd_edge import AugmentConfig, DreamConfig, LearnerConfig, TrainConfig

    train = TrainConfig(epochs=1, lr=0.05, batch_size=16, schedule="cosine", milestones=())
    base = dict(
        method=method,
        backbone="resnet20",
        max_classes=6,
        first_task=train,
        later_tasks=TrainConfig(epochs=1, lr=0.01, batch_size=16, schedule="cosine", milestones=()),
        dream=DreamConfig(iterations=3, batch_size=16),
        augment=AugmentConfig(crop_padding=1, flip=False, brightness=0.0, contrast=0.0),
        head_balance="weight_align",
        train_eval_max_images=None,
        device="cpu",
    )
    base.update(overrides)
    return LearnerConfig(**base)


def make_task(labels, n_per_class=12, size=8, channels=1, seed=0):
    """Random but class-dependent images (a per-class brightness pattern), uint8."""
    g = torch.Generator().manual_seed(seed)
    images, ys = [], []
    for lab in labels:
        base = torch.rand(channels, size, size, generator=g) * 200
        noise = torch.rand(n_per_class, channels, size, size, generator=g) * 55
        images.append((base + noise).to(torch.uint8))
        ys += [lab] * n_per_class
    return torch.cat(images), ys


@pytest.fixture
def cifar10_npz() -> Path:
    p = Path(os.environ.get("ABD_EDGE_CIFAR10_JPEG", REPO.parent / "shared" / "data" / "cifar10_jpeg.npz"))
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


def fitted_learner(method: str = "abd"):
    """A tiny learner that has learned classes 0 ("zero") and 1 ("one"); returns (learner, images, labels)."""
    from abd_edge import Learner

    learner = Learner(tiny_config(method))
    x, y = make_task([0, 1])
    learner.learn_new_classes((x, y), class_names={0: "zero", 1: "one"})
    return learner, x, y


def rewrite_manifest(version_dir, manifest) -> None:
    """Write an edited manifest with a matching digest, as a legitimate (older or newer) writer would.

    Tests that check what the reader does with a manifest's *content* need
    it past the digest check, which otherwise refuses any edit first.
    """
    import json as _json
    from pathlib import Path as _Path

    from abd_edge.bundle_format import MANIFEST, MANIFEST_DIGEST, manifest_digest

    d = _Path(version_dir)
    (d / MANIFEST).write_text(_json.dumps(manifest))
    (d / MANIFEST_DIGEST).write_text(manifest_digest(manifest) + "\n")
