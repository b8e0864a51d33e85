"""What a method is: a loss over one forward pass of the shared training loop.

The training loop (``abd_edge.engine``) owns batching, augmentation, replay
sampling, the optimizer and the schedule. It runs the current classifier once
on ``[real; synthetic]`` and, if the method asks for it, the frozen previous
classifier, then hands the outputs to the method. A method only says which
inputs it needs and turns outputs into a loss, so adding a method never means
copying the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..models.resnet import CifarResNet


@dataclass
class StepOutputs:
    """One training step's forward results, real samples first.

    ``logits``/``features`` come from the current classifier in train mode
    (with gradient). ``old_logits``/``old_features`` come from the frozen
    previous classifier (no gradient), present when the method uses it.
    ``old_logits`` holds only the old classes' columns.
    """

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    n_real: int
    old_logits: torch.Tensor | None = None
    old_features: torch.Tensor | None = None


@dataclass
class TaskContext:
    n_old: int  # classes seen before this task
    n_seen: int  # classes seen including this task
    model: CifarResNet
    old_model: CifarResNet | None


class Method:
    """Base class: plain cross-entropy over the seen classes (also every method's task 1)."""

    name = "base"
    uses_replay = False  # wants a synthetic batch next to every real batch
    uses_old_model = False  # wants the previous classifier's outputs

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def loss(self, ctx: TaskContext, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx.n_old == 0:
            ce = F.cross_entropy(out.logits[:, : ctx.n_seen], out.labels)
            return ce, {"ce": ce}
        return self.incremental_loss(ctx, out)

    def incremental_loss(self, ctx: TaskContext, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def soft_cross_entropy_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation, T^2 * mean over samples of CE(softmax(teacher/T), softmax(student/T)).

    The cross-entropy form differs from KL only by the teacher's entropy, a
    constant, so gradients are identical; it is what LwF and the reference use.
    """
    t = temperature
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    return -(q * log_p).sum(dim=1).mean() * t * t


def balance_weights(labels: torch.Tensor, n_old: int, n_seen: int) -> torch.Tensor:
    """ABD's class-balance weight per sample: r = n_old / n for old labels, 1 - r for new."""
    r = n_old / n_seen
    old = labels < n_old
    return torch.where(old, torch.full_like(labels, r, dtype=torch.float32), torch.full_like(labels, 1 - r, dtype=torch.float32))
