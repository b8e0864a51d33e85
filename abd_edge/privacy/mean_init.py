"""DP class-mean initialisation of a private update's new head rows (docs/PRIVACY.md, "Class-mean release").

Why: a private update trains only the new classes' head rows on frozen
features, and DP-SGD starts them from random He rows, so part of its
budget and steps go into finding the classes at all. One Gaussian release of
per-class sums of the local images' penultimate features (under the released,
frozen backbone) and of per-class counts places each new row at its class's
noisy mean; with ``mean_init_fraction < 1`` DP-SGD then fine-tunes from
there. With ``mean_init_rule="lda"`` every seen row comes from one
shared-covariance rule (old means and the covariance from dreams, new
means from the release), and by default (``mean_init_fraction=1``) that
release is the whole private update: on digits DP-SGD after it lost more
to its noise than it added (docs/PRIVACY.md).

The mechanism: each local image ``i`` of class ``c`` contributes one vector
``v_i`` with its feature clipped to norm ``C`` in class ``c``'s slot and
the value ``C`` in class ``c``'s count entry, zeros elsewhere, so
``||v_i|| <= sqrt(C^2 + C^2) = sqrt(2) C`` whatever the class: adding or
removing one image moves the released sum by at most that (the joint L2
sensitivity). Gaussian noise of standard deviation ``sigma * sqrt(2) C`` on
every coordinate is the Gaussian mechanism with noise multiplier ``sigma``,
which Opacus's accountants count as one step at sample rate 1; the update's
DP-SGD steps compose with it in the same accountant. Everything after the
release (means, row scaling, biases) is post-processing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..class_statistics import ClassStatistics, backbone_fingerprint
from ..engine import to_unit_float
from ..errors import PrivacyError
from ..models.resnet import EVAL_BATCH, eval_features

SENSITIVITY_FACTOR = math.sqrt(2.0)  # L2 sensitivity of the released vector, in units of the clipping norm C


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
                         batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Float32 penultimate features of un-augmented images under the frozen model (eval mode: BN statistics used, never updated)."""
    return eval_features(model, images, batch_size=batch_size, prepare=lambda x: normalize(to_unit_float(x)))


@torch.no_grad()
def dreamed_features(model: nn.Module, generator: nn.Module | None, seed: int, n: int, n_old: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features of ``n`` dreamed images through the released model, and their old-class pseudo-labels.

    Public: the released generator and model, and a seed; no local image.
    """
    if generator is None:
        raise PrivacyError("the class-mean release needs public features of the old classes: class statistics of the "
                           "non-private data in this backbone (LearnerConfig.class_statistics), which this learner does not "
                           "hold for every old class, or dreamed features, and it has no generator: set "
                           "PrivacyConfig(mean_init_clip=..., mean_init_rule='nearest_mean') or mean_init_fraction=0")
    was = generator.training, model.training
    generator.eval()
    model.eval()
    try:
        device = next(generator.parameters()).device
        g = torch.Generator(device=device).manual_seed(seed)
        logits, feats = model.forward_with_features(generator.sample(n, generator=g))  # type: ignore[operator]
    finally:
        generator.train(was[0])
        model.train(was[1])
    return feats.float(), logits[:, :n_old].argmax(dim=1)


def public_feature_scale(feats: torch.Tensor, quantile: float = 0.95) -> float:
    """A clipping norm from public inputs only: a high quantile of the feature norms of dreamed images.

    The dreams come from the released generator through the released model,
    so the choice of ``C`` depends on no local image. A high quantile keeps
    clipping rare, so the clipped class means stay close to the raw means
    whose geometry the linear rules below need.
    """
    return float(feats.norm(dim=1).quantile(quantile))


def clipped_class_sums(features: torch.Tensor, classes: torch.Tensor, n_classes: int, clip: float) -> torch.Tensor:
    """Sum over images of ``v_i``: row ``c`` = [sum of clipped features of class c, C * count of class c].

    ``classes`` are 0-based within the update's new classes. Each image's
    ``v_i`` has norm at most ``sqrt(2) * clip`` (its clipped feature and the
    count entry ``clip``, in one row).
    """
    norms = features.norm(dim=1, keepdim=True)
    clipped = features * (clip / norms.clamp_min(1e-12)).clamp(max=1.0)
    rows = torch.cat([clipped, torch.full_like(norms, clip)], dim=1)
    return torch.zeros(n_classes, rows.shape[1], dtype=rows.dtype, device=rows.device).index_add_(0, classes, rows)


def mean_noise_var(noise_std: float, counts: torch.Tensor) -> torch.Tensor:
    """Variance of each coordinate of a released mean's error: the sum's noise std over the (noisy, at least 1) count, squared."""
    return (noise_std / counts.clamp_min(1.0)) ** 2


@dataclass
class MeanRelease:
    """What the release made public (post-processing may use these freely)."""

    means: torch.Tensor  # (K, d): noisy sum / noisy count, per new class
    counts: torch.Tensor  # (K,): noisy counts (not clamped)
    clip: float
    noise_multiplier: float
    classes: list[int] = dataclasses.field(default_factory=list)  # their head rows
    backbone: str = ""  # fingerprint of the frozen features the means live in
    old_sources: dict[str, Any] = dataclasses.field(default_factory=dict)  # where the LDA rule's old means, covariance and clip came from

    @property
    def sensitivity(self) -> float:
        return SENSITIVITY_FACTOR * self.clip

    @property
    def noise_var(self) -> torch.Tensor:
        """Per class, the variance of each coordinate of the noisy mean's error (noise std / count, squared)."""
        return mean_noise_var(self.noise_multiplier * self.sensitivity, self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": 1.0, "steps": 1, "clip": self.clip,
                "l2_sensitivity": self.sensitivity, "noisy_counts": [round(float(c), 3) for c in self.counts],
                "part_of_update_epsilon": True, "classes": list(self.classes),
                "noisy_means": [[float(v) for v in row] for row in self.means.cpu()], "backbone_sha256": self.backbone,
                "public_inputs": dict(self.old_sources)}


def known_class_means(ledger: Iterable[Mapping[str, Any]], model: nn.Module) -> dict[int, tuple[torch.Tensor, float]]:
    """Head row -> (noisy mean, its noise variance), from earlier private updates' releases in the same (bit-identical) backbone.

    The released means are public once released, so reusing them is
    post-processing; they describe the old classes better than dreamed
    features do (no generator in between).
    """
    fp = backbone_fingerprint(model)
    device = model.get_classifier().weight.device  # type: ignore[operator]
    out: dict[int, tuple[torch.Tensor, float]] = {}
    for entry in ledger:
        rel = entry.get("mean_init") or {}
        if rel.get("backbone_sha256") == fp and rel.get("noisy_means"):
            tau2 = mean_noise_var(float(rel["noise_multiplier"]) * float(rel["l2_sensitivity"]),
                                  torch.tensor(rel["noisy_counts"], dtype=torch.float64))
            for c, mu, t in zip(rel["classes"], rel["noisy_means"], tau2.tolist()):
                out[int(c)] = (torch.tensor(mu, dtype=torch.float32, device=device), t)
    return out


def public_old_means(statistics: ClassStatistics | None,
                     released: Mapping[int, tuple[torch.Tensor, float]]) -> dict[int, tuple[torch.Tensor, float]]:
    """Old head row -> (mean, noise variance): the non-private data's class statistics (exact), else an earlier release (noisy)."""
    out = dict(released)
    if statistics is not None:
        out.update({r: (m, 0.0) for r, m in statistics.means_by_row().items()})
    return out


def release_class_means(features: torch.Tensor, classes: torch.Tensor, n_classes: int, clip: float,
                        noise_multiplier: float, generator: torch.Generator) -> MeanRelease:
    """The Gaussian mechanism on the per-class clipped sums and counts; means derived from the noisy release."""
    sums = clipped_class_sums(features, classes, n_classes, clip)
    if noise_multiplier > 0:
        noise = torch.randn(sums.shape, generator=generator, device=sums.device, dtype=sums.dtype)
        sums = sums + noise * (noise_multiplier * SENSITIVITY_FACTOR * clip)
    counts = sums[:, -1] / clip
    means = sums[:, :-1] / counts.clamp_min(1.0)[:, None]
    return MeanRelease(means, counts, clip, noise_multiplier)


@torch.no_grad()
def init_rows_from_means(head: nn.Linear, n_old: int, means: torch.Tensor) -> float:
    """Set rows ``n_old ..`` to the nearest-class-mean rule, scaled to the old rows' mean norm; returns the scale.

    Nearest mean in feature space scores class c by ``mu_c . f - ||mu_c||^2 / 2``
    (up to a term shared by all classes); that is a linear row ``s mu_c`` with
    bias ``-s ||mu_c||^2 / 2``. ``s`` puts the new rows at the old rows'
    mean norm, so new and old logits start on one scale (the same norm target
    as weight aligning). Only the new rows change.
    """
    k = means.shape[0]
    norms = means.norm(dim=1)
    target = head.weight[:n_old].norm(dim=1).mean()
    scale = target / norms.mean().clamp_min(1e-12)
    head.weight[n_old : n_old + k] = (scale * means).to(head.weight.dtype)
    if head.bias is not None:
        head.bias[n_old : n_old + k] = (-scale * norms**2 / 2).to(head.bias.dtype)
    return float(scale)


@torch.no_grad()
def lda_head(head: nn.Linear, n_old: int, new_means: torch.Tensor, new_noise_var: torch.Tensor | None = None, *,
             known: Mapping[int, tuple[torch.Tensor, float]] | None = None,
             dreams: tuple[torch.Tensor, torch.Tensor] | None = None, covariance: torch.Tensor | None = None,
             shrinkage: float = 0.3, min_dreams: int = 4) -> float | None:
    """Every seen row from a shared-covariance (LDA) rule; returns the scale, or None (head unchanged) if an old class has no source.

    Why: on frozen features, the old rows (trained against the old classes
    only) and new rows set or trained beside them are on different scales;
    one rule for all classes puts them on one. Everything it reads is public
    to the update: the new classes' means from the release; each old class's
    mean from ``known`` (row -> (mean, its noise variance ``tau^2``): the
    non-private data's class statistics with ``tau^2 = 0``, or an earlier
    private update's release, :func:`known_class_means`), else from
    ``dreams`` (features, old-class labels) of the released generator; the
    within-class covariance from ``covariance`` (the class statistics'),
    else from the dreams around their own classes' dreamed means.
    ``w_c = s P mu_c``, ``b_c = -s (mu_c' P mu_c - tau_c^2 tr P) / 2`` with
    ``P`` the inverse of the covariance shrunk toward ``trace/d * I`` plus
    the noisy means' mean noise variance ``tau^2 I``. A noisy mean
    ``mu + e`` (``e ~ N(0, tau^2 I)``) has ``E[(mu+e)' P (mu+e)] = mu' P mu
    + tau^2 tr P``: without the correction every noisy class is pushed down
    by that term (on digits at epsilon 8 the new classes were never
    predicted). ``s`` puts the old rows at their previous mean norm (argmax
    unchanged; the DP-SGD steps start on the usual scale).
    """
    known = known or {}
    k = new_means.shape[0]
    missing = [c for c in range(n_old) if c not in known]
    if n_old == 0 or ((missing or covariance is None) and dreams is None):
        return None
    device = new_means.device
    dreamed: torch.Tensor | None = None
    if dreams is not None:
        dream_feats, dream_labels = dreams[0].float(), dreams[1]
        counts = torch.bincount(dream_labels, minlength=n_old)
        if any(int(counts[c]) < min_dreams for c in missing):
            return None
        dreamed = torch.zeros(n_old, dream_feats.shape[1], dtype=dream_feats.dtype, device=dream_feats.device)
        dreamed.index_add_(0, dream_labels, dream_feats).div_(counts.clamp_min(1)[:, None].to(dream_feats.dtype))
        if covariance is None:
            centred = dream_feats - dreamed[dream_labels]  # dreams around their own classes' dreamed means
            covariance = centred.T @ centred / centred.shape[0]
    assert covariance is not None
    cov = covariance.float().to(device)
    old_means = torch.stack([known[c][0].float().to(device) if c in known else dreamed[c].to(device)  # type: ignore[index]
                             for c in range(n_old)])
    tau2 = torch.cat([torch.tensor([known[c][1] if c in known else 0.0 for c in range(n_old)]),
                      torch.zeros(k) if new_noise_var is None else new_noise_var.float().cpu()]).to(cov)
    noisy = tau2 > 0
    d = cov.shape[0]
    ridge = shrinkage * torch.trace(cov) / d + (tau2[noisy].mean() if bool(noisy.any()) else 0.0)
    cov = (1 - shrinkage) * cov + ridge * torch.eye(d, dtype=cov.dtype, device=cov.device)
    means = torch.cat([old_means, new_means.float().to(device)])
    w = torch.linalg.solve(cov, means.T).T  # P mu_c
    trace_p = torch.linalg.inv(cov).diagonal().sum()
    b = -0.5 * ((w * means).sum(dim=1) - tau2 * trace_p)
    target = head.weight[:n_old].norm(dim=1).mean()
    scale = target / w[:n_old].norm(dim=1).mean().clamp_min(1e-12)  # from public rows only: old rows never see the release
    n_seen = means.shape[0]
    head.weight[:n_seen] = (scale * w).to(head.weight.dtype)
    if head.bias is not None:
        head.bias[:n_seen] = (scale * b).to(head.bias.dtype)
    return float(scale)
