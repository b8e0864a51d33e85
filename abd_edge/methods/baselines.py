"""The baselines of the ABD paper, as losses over the same training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, StepOutputs, TaskContext, soft_cross_entropy_kd


class FineTune(Method):
    """Cross-entropy over all seen classes on the new data only: the lower bound."""

    name = "finetune"

    def incremental_loss(self, ctx: TaskContext, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(out.logits[:, : ctx.n_seen], out.labels)
        return ce, {"ce": ce}


class LwF(Method):
    """Learning without Forgetting: CE plus distillation (T=2) of the old outputs on new data."""

    name = "lwf"
    uses_old_model = True

    def incremental_loss(self, ctx: TaskContext, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert out.old_logits is not None
        ce = F.cross_entropy(out.logits[:, : ctx.n_seen], out.labels)
        kd = self.cfg.kd_weight * soft_cross_entropy_kd(out.logits[:, : ctx.n_old], out.old_logits, self.cfg.kd_temperature)
        return ce + kd, {"ce": ce, "kd": kd}


def lwf_mc_targets(old_logits: torch.Tensor, labels: torch.Tensor, n_seen: int) -> torch.Tensor:
    """Old columns: the previous model's sigmoid outputs; new columns: one-hot labels."""
    n_old = old_logits.shape[1]
    target = F.one_hot(labels, n_seen).float()
    target[:, :n_old] = torch.sigmoid(old_logits.float())
    return target


class LwFMC(Method):
    """LwF.MC (the iCaRL-style variant): per-class sigmoid BCE with old outputs as soft targets.

    BCE is summed over the seen classes and averaged over samples, which
    keeps its gradient per logit on the scale of softmax cross-entropy.
    """

    name = "lwf_mc"
    uses_old_model = True

    def incremental_loss(self, ctx: TaskContext, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert out.old_logits is not None
        target = lwf_mc_targets(out.old_logits, out.labels, ctx.n_seen)
        bce = F.binary_cross_entropy_with_logits(out.logits[:, : ctx.n_seen], target, reduction="none").sum(1).mean()
        return bce, {"bce": bce}


class DeepInversion(LwF):
    """Dreamed replay with plain CE over all classes plus logit distillation.

    The loss is LwF's, applied to ``[real; synthetic]``: the same generator
    and replay as ABD, but synthetic and real images are mixed into one
    softmax, so the classifier can separate old from new classes by the
    synthetic-vs-real domain gap, which ABD diagnoses as the failure.
    """

    name = "deepinversion"
    uses_replay = True
