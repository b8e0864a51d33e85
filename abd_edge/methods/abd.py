"""Always Be Dreaming (Smith et al., ICCV 2021), the three-part update loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, StepOutputs, TaskContext, balance_weights


def local_ce(logits: torch.Tensor, labels: torch.Tensor, n_old: int, n_seen: int) -> torch.Tensor:
    """CE on real data over the new classes' logits only.

    Neither synthetic images nor old heads take part, so the features are
    never asked to tell real new images from synthetic old ones: that
    shortcut (the domain gap) is what makes DeepInversion-style replay fail.
    """
    return F.cross_entropy(logits[:, n_old:n_seen], labels - n_old)


def head_ce(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor, n_old: int, n_seen: int) -> torch.Tensor:
    """Class-balanced CE over all seen classes that trains only the linear head."""
    logits = head(features.detach())[:, :n_seen]
    w = balance_weights(labels, n_old, n_seen)
    return (F.cross_entropy(logits, labels, reduction="none") * w).mean()


def importance_weighted_feature_kd(
    old_head_weight: torch.Tensor, features: torch.Tensor, old_features: torch.Tensor
) -> torch.Tensor:
    """mean_i sum_k (W_old (f_new - f_old))_k^2 / n_old.

    The head's bias cancels in H_old(f_new) - H_old(f_old), so only the old
    classes' weight rows matter: a feature dimension the old head ignores
    may drift freely, one it relies on is held in place.
    """
    diff = (features - old_features) @ old_head_weight.t()
    return (diff**2).sum(dim=1).mean() / old_head_weight.shape[0]


class ABD(Method):
    name = "abd"
    uses_replay = True
    uses_old_model = True

    def incremental_loss(self, ctx: TaskContext, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert ctx.old_model is not None and out.old_features is not None
        n_old, n = ctx.n_old, ctx.n_seen
        real = slice(0, out.n_real)
        # A private update evaluates the dreamed rows alone (n_real = 0): no local term there.
        local = local_ce(out.logits[real], out.labels[real], n_old, n) if out.n_real > 0 else out.logits.new_zeros(())
        head = head_ce(ctx.model.get_classifier(), out.features, out.labels, n_old, n)
        w_old = ctx.old_model.get_classifier().weight[:n_old].detach()
        kd = self.cfg.feature_kd_weight * importance_weighted_feature_kd(w_old, out.features, out.old_features)
        return local + head + kd, {"local_ce": local, "head_ce": head, "feature_kd": kd}
