"""The quality gate a device update must pass before it is committed as a bundle version.

The parity check of an export only shows that ONNX Runtime computes what
torch computes; it says nothing about whether the model is any good. A
local update trained with a bad learning rate, on mislabelled data or
through numerical blow-up can pass parity with logits of 1e15 and train
accuracy 0, and would then be served. The gate measures the updated model
on what the device has at hand (its new data and images the parent
version's generator dreams of the old classes) and refuses a version that
is not finite, not sane in scale, no better than chance on its own new
data, or that has collapsed the old classes.

torch is imported inside the functions only: :class:`QualityGate` is a
plain configuration object the runtime can import without torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from abd_edge.errors import ConfigError, UpdateRejectedError

if TYPE_CHECKING:
    import torch

    from abd_edge.learner import Learner

__all__ = ["QualityGate", "dream_old_classes", "check_update"]


@dataclass(frozen=True)
class QualityGate:
    """Thresholds a device update must meet to be committed (docs/DEPLOYMENT.md, "The quality gate").

    ``min_train_accuracy``: top-1 accuracy of the updated model on the
    update's own new images, over every class it knows; a model at chance
    on the data it was just trained on has learned nothing. ``max_abs_logit``:
    the largest |logit| on the new images and on dreamed old-class images;
    a healthy classifier stays within tens. ``min_old_class_share``: of the
    images the parent version's generator dreams for the old classes, the
    share the updated model still assigns to some old class; 0 means every
    old class collapsed into the new ones (as fine-tuning without replay
    does). ``dream_images``: how many old-class images to dream for that check
    (the share is skipped for a bundle without a generator).
    Set ``enabled=False`` to commit every update that exports.
    """

    min_train_accuracy: float = 0.5
    max_abs_logit: float = 1e3
    min_old_class_share: float = 0.1
    dream_images: int = 64
    new_images: int = 256
    enabled: bool = True

    def validate(self) -> None:
        for name in ("min_train_accuracy", "min_old_class_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"QualityGate.{name}={v!r}: expected a fraction in [0, 1]")
        v = self.max_abs_logit
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isnan(v):
            raise ConfigError(f"QualityGate.max_abs_logit={v!r}: expected a positive number (inf disables the check)")
        for name in ("dream_images", "new_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"QualityGate.{name}={v!r}: expected an int >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (manifests refuse inf): a disabled bound is recorded as None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def dream_old_classes(learner: "Learner", gate: QualityGate, seed: int = 0) -> "torch.Tensor | None":
    """Images of the old classes, dreamed by the learner *before* its update (None without a generator)."""
    if not gate.enabled or learner.generator is None or learner.num_classes == 0:
        return None
    images, _labels = learner.dream(gate.dream_images, seed=seed)
    return images


def check_update(
    learner: "Learner",
    *,
    new_images: "torch.Tensor | None",
    train_accuracy: float | None,
    n_old: int,
    old_dreamed: "torch.Tensor | None",
    gate: QualityGate,
) -> dict[str, Any]:
    """Measure the updated ``learner``; return the measurements, or raise UpdateRejectedError naming each failure.

    ``new_images``: the update's images (uint8 NCHW, a sample is enough);
    ``old_dreamed``: from :func:`dream_old_classes` before the update;
    ``n_old``: the number of classes the parent version knew.

    A differentially private update passes ``new_images=None`` and
    ``train_accuracy=None``: whether to commit must not depend on the local
    data outside the DP mechanism (docs/PRIVACY.md), so only the checks on
    dreamed images run, and the others are recorded as not checked.
    """
    import torch

    private = new_images is None
    acc = None if train_accuracy is None else float(train_accuracy)
    checks: dict[str, Any] = {"gate": gate.to_dict(), "train_accuracy": acc if acc is not None and math.isfinite(acc) else None}
    if private:
        checks["train_accuracy"] = "not checked: a private update decides on dreamed images only"
    if not gate.enabled:
        checks["passed"] = True
        return checks
    reasons: list[str] = []
    outputs = [] if private else [learner.logits(new_images[: gate.new_images])]
    old_share = None
    if old_dreamed is not None and n_old > 0:
        with torch.no_grad():
            model = learner.model.eval()
            old_logits = model(old_dreamed.to(next(model.parameters()).device))[:, : learner.num_classes].float().cpu()
        outputs.append(old_logits)
        old_share = float((old_logits.argmax(1) < n_old).float().mean()) if torch.isfinite(old_logits).all() else 0.0
    all_logits = torch.cat([o.reshape(-1) for o in outputs]) if outputs else torch.zeros(0)
    finite = bool(torch.isfinite(all_logits).all())
    finite_part = all_logits[torch.isfinite(all_logits)]
    max_abs = float(finite_part.abs().max()) if finite_part.numel() else (0.0 if finite else math.inf)
    checks.update(finite=finite, max_abs_logit=max_abs if math.isfinite(max_abs) else None, old_class_share=old_share)
    if not finite:
        reasons.append("the updated model outputs non-finite logits (NaN or inf)")
    elif max_abs > gate.max_abs_logit:
        reasons.append(f"its largest |logit| is {max_abs:.3g}, above max_abs_logit={gate.max_abs_logit:g} (training blew up)")
    if acc is not None and (not math.isfinite(acc) or acc < gate.min_train_accuracy):
        reasons.append(
            f"its accuracy on its own new data is {acc:.3f}, below min_train_accuracy={gate.min_train_accuracy:g}"
        )
    if old_share is not None and old_share < gate.min_old_class_share:
        reasons.append(
            f"only {old_share:.3f} of dreamed old-class images are still given an old class, below "
            f"min_old_class_share={gate.min_old_class_share:g} (the old classes collapsed)"
        )
    checks["passed"] = not reasons
    if reasons:
        raise UpdateRejectedError(
            "the update was not committed, the bundle is unchanged: " + "; ".join(reasons)
            + " (thresholds: QualityGate, see docs/DEPLOYMENT.md)",
            reasons=reasons, checks=checks,
        )
    return checks
