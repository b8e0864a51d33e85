"""Class statistics of non-private training data: per-class feature means and the pooled within-class covariance.

Why: a private update (privacy/mean_init.py) sets every seen head row by one
shared-covariance (LDA) rule on the frozen backbone, and the old classes'
means and the covariance must come from something the device's data did not
touch. Dreamed features are one such source, but a poor one where it counts:
on the cifar10 update their old-class means were within cosine 0.98 of the
real ones, yet the LDA head built on them classified 33% of the old classes'
test images correctly against 72% from the real statistics (93% before the
update)
(benchmarks/results/head-rule-diagnosis-cifar10-seed1.json). Means differ
from each other by little next to their size, so a small error in each moves
the boundaries a lot.

The data a learner learned without privacy (the server's base task; the
ledger says epsilon = inf for it) is already in the released model, so one
mean per class and one ``d x d`` covariance of its penultimate features,
computed once in the final backbone, cost the device's data nothing. They do
disclose those aggregates of the server's data to whoever holds the learner
or a bundle of it; ``LearnerConfig.class_statistics=False`` keeps none.

The statistics hold only in the backbone they were computed in: they carry
its fingerprint, and an update that changes the backbone drops them (a later
non-private update computes fresh ones for its own classes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .models.resnet import EVAL_BATCH, eval_features

NORM_QUANTILE = 0.95  # the clipping norm a private release may take from these statistics (mean_init.public_feature_scale)


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer outside the head: statistics of features hold only in bit-identical features."""
    head = {id(t) for t in model.get_classifier().parameters()}  # type: ignore[operator]
    h = hashlib.sha256()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in head:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ClassStatistics:
    """Feature statistics of some head rows' training images, in one backbone."""

    backbone: str  # backbone_fingerprint of the model they were computed in
    rows: tuple[int, ...]  # head rows (class indices), one per mean
    means: torch.Tensor  # (K, d) float32
    counts: torch.Tensor  # (K,) int64: images per class
    scatter: torch.Tensor  # (d, d) float64: sum over images of (f - mean of its class)(f - mean of its class)^T
    norm_quantile: float  # NORM_QUANTILE of the images' feature norms

    def __post_init__(self) -> None:
        k, d = len(self.rows), self.scatter.shape[0]
        if self.means.shape != (k, d) or self.counts.shape != (k,) or self.scatter.shape != (d, d):
            raise ValueError(f"class statistics of {k} rows need means ({k}, {d}), counts ({k},) and scatter ({d}, {d}); "
                             f"got {tuple(self.means.shape)}, {tuple(self.counts.shape)}, {tuple(self.scatter.shape)}")
        if len(set(self.rows)) != k or any(r < 0 for r in self.rows):
            raise ValueError(f"class statistics rows must be distinct non-negative head rows, got {list(self.rows)}")
        if bool((self.counts < 1).any()):
            raise ValueError(f"class statistics need at least 1 image per class, got counts {self.counts.tolist()}")

    @property
    def covariance(self) -> torch.Tensor:
        """The pooled within-class covariance (maximum likelihood), float32."""
        return (self.scatter / float(self.counts.sum())).float()

    def means_by_row(self) -> dict[int, torch.Tensor]:
        return {r: self.means[i] for i, r in enumerate(self.rows)}

    def holds_for(self, model: nn.Module) -> bool:
        return self.backbone == backbone_fingerprint(model)

    def merged(self, other: "ClassStatistics") -> "ClassStatistics":
        """Both sets of rows in one: same backbone, disjoint rows (each update adds new classes)."""
        if other.backbone != self.backbone:
            raise ValueError("class statistics of two different backbones cannot be merged")
        overlap = sorted(set(self.rows) & set(other.rows))
        if overlap:
            raise ValueError(f"class statistics of rows {overlap} exist already; an update only adds new rows")
        return ClassStatistics(self.backbone, self.rows + other.rows, torch.cat([self.means, other.means.to(self.means)]),
                               torch.cat([self.counts, other.counts.to(self.counts)]), self.scatter + other.scatter.to(self.scatter),
                               max(self.norm_quantile, other.norm_quantile))

    def to(self, device: torch.device | str) -> "ClassStatistics":
        return ClassStatistics(self.backbone, self.rows, self.means.to(device), self.counts.to(device), self.scatter.to(device),
                               self.norm_quantile)

    # Saved as three tensors (safetensors) and a small JSON object (checkpoint.py).
    def tensors(self, prefix: str = "class_statistics") -> dict[str, torch.Tensor]:
        return {f"{prefix}.means": self.means.detach().cpu().contiguous(), f"{prefix}.counts": self.counts.cpu().contiguous(),
                f"{prefix}.scatter": self.scatter.cpu().contiguous()}

    def to_dict(self) -> dict[str, Any]:
        return {"backbone_sha256": self.backbone, "rows": list(self.rows), "norm_quantile": self.norm_quantile,
                "n_images": int(self.counts.sum())}

    @classmethod
    def from_saved(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   prefix: str = "class_statistics") -> "ClassStatistics":
        """Raises KeyError/TypeError/ValueError on a malformed entry (the checkpoint reader turns those into BundleIntegrityError)."""
        if not isinstance(meta, Mapping):
            raise TypeError(f"class_statistics is {meta!r:.80}, expected an object")
        rows = meta["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
            raise TypeError(f"class_statistics rows are {rows!r:.80}, expected a list of ints")
        backbone, q = meta["backbone_sha256"], meta["norm_quantile"]
        if not isinstance(backbone, str) or not isinstance(q, (int, float)) or isinstance(q, bool) or not q > 0:
            raise TypeError(f"class_statistics backbone_sha256/norm_quantile are {backbone!r:.80}/{q!r}, expected a string and a positive number")
        return cls(backbone, tuple(rows), tensors[f"{prefix}.means"].float(), tensors[f"{prefix}.counts"].long(),
                   tensors[f"{prefix}.scatter"].double(), float(q))


@torch.no_grad()
def compute_class_statistics(model: nn.Module, images: torch.Tensor, rows: torch.Tensor,
                             prepare: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int = EVAL_BATCH) -> ClassStatistics:
    """Statistics of ``images`` (head rows ``rows``) through ``model`` in eval mode, un-augmented; ``prepare``: uint8 -> model input."""
    feats = eval_features(model, images, batch_size=batch_size, prepare=prepare)
    return class_statistics_of_features(model, feats, rows)


@torch.no_grad()
def class_statistics_of_features(model: nn.Module, features: torch.Tensor, rows: torch.Tensor) -> ClassStatistics:
    """Statistics of penultimate ``features`` already computed in ``model`` (eval mode, un-augmented), head rows ``rows``.

    Why apart from :func:`compute_class_statistics`: the learner's pass after
    training computes the features once and takes both these statistics and
    the training accuracy from them, instead of two passes over the images.
    """
    feats = features.double()
    present, inverse = torch.unique(rows, return_inverse=True)
    counts = torch.bincount(inverse, minlength=present.numel())
    sums = torch.zeros(present.numel(), feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, inverse, feats)
    means = sums / counts[:, None].to(feats.dtype)
    centred = feats - means[inverse]
    return ClassStatistics(backbone_fingerprint(model), tuple(int(r) for r in present.tolist()), means.float(), counts.long(),
                           centred.T @ centred, float(feats.norm(dim=1).quantile(NORM_QUANTILE)))
