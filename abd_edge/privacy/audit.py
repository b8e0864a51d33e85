"""Audits of what an update leaks: membership inference, memorisation of dreams, persistence of raw data.

A DP guarantee is an upper bound; an audit is a lower bound measured by
attacking. Membership inference asks whether an image was in an update's
local data, from the released classifier:

* loss threshold (Yeom et al., 2018): score = -loss; members tend to have
  lower loss;
* calibrated, LiRA-style (Carlini et al., 2022): a few shadow updates from
  the same parent model, each on a random half of members and non-members;
  per example, the logit-scaled confidence under shadows that trained on it
  and under shadows that did not are fitted by Gaussians (one global
  variance each, the variant for few shadows), and the score is the log
  likelihood ratio of the released model's confidence.

Both report AUC and TPR at 1% FPR (the low-FPR regime is what matters for
privacy). Memorisation of dreams compares nearest-neighbour distances from
dreamed images to the update's training images and to unseen test images of
the same classes, in pixel and in feature space. The persistence scan checks
that no raw image's bytes are in any file under some directories.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from ..data.augment import to_unit_float
from ..data.images import LabeledImages
from ..models.resnet import eval_features

if TYPE_CHECKING:
    from ..learner import Learner

log = logging.getLogger(__name__)


# ------------------------------------------------------------- metrics
def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a member > score of a non-member), ties counting half (the Mann-Whitney statistic)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.sort(np.asarray(neg, dtype=np.float64))
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUC needs members and non-members, got {len(pos)} and {len(neg)}")
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (len(pos) * len(neg)))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    """Fraction of members scored above a threshold that at most ``fpr`` of non-members exceed."""
    neg = np.sort(np.asarray(neg, dtype=np.float64))[::-1]
    k = int(np.floor(fpr * len(neg)))  # non-members allowed above the threshold
    threshold = neg[k] if k < len(neg) else -np.inf
    return float(np.mean(np.asarray(pos) > threshold))


@dataclass
class AttackResult:
    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    n_members: int
    n_non_members: int

    @classmethod
    def of(cls, attack: str, pos: np.ndarray, neg: np.ndarray) -> "AttackResult":
        return cls(attack, roc_auc(pos, neg), tpr_at_fpr(pos, neg, 0.01), len(pos), len(neg))


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(z)), targets]


def logit_confidence(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log(p_y / (1 - p_y)) computed stably as z_y - logsumexp_{j != y} z_j (LiRA's statistic)."""
    z = np.asarray(logits, dtype=np.float64)
    zy = z[np.arange(len(z)), targets]
    others = z.copy()
    others[np.arange(len(z)), targets] = -np.inf
    m = others.max(axis=1)
    return zy - (m + np.log(np.exp(others - m[:, None]).sum(axis=1)))


def lira_scores(target: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray) -> np.ndarray:
    """Log likelihood ratio per example; ``shadow`` (K, n) confidences, ``shadow_in`` (K, n) booleans."""
    import warnings

    inside, outside = np.where(shadow_in, shadow, np.nan), np.where(~shadow_in, shadow, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an example never (or always) in: handled below
        mu_in, mu_out = np.nanmean(inside, axis=0), np.nanmean(outside, axis=0)
    # An example that no shadow held in (or out) falls back to the population mean.
    mu_in = np.where(np.isnan(mu_in), np.nanmean(inside), mu_in)
    mu_out = np.where(np.isnan(mu_out), np.nanmean(outside), mu_out)
    var_in = np.nanvar(inside - mu_in) + 1e-6
    var_out = np.nanvar(outside - mu_out) + 1e-6
    ll_in = -0.5 * (target - mu_in) ** 2 / var_in - 0.5 * np.log(var_in)
    ll_out = -0.5 * (target - mu_out) ** 2 / var_out - 0.5 * np.log(var_out)
    return ll_in - ll_out


# --------------------------------------------------------- membership
def _targets(learner: "Learner", data: LabeledImages) -> np.ndarray:
    return np.asarray(learner.registry.indices_of(data.labels))


def membership_audit(
    target: "Learner",
    members: LabeledImages,
    non_members: LabeledImages,
    *,
    base: "Learner | None" = None,
    shadows: int = 4,
    privacy: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss-threshold attack, and the calibrated attack when ``base`` (the model before the update) is given.

    ``privacy`` is the PrivacyConfig the shadow updates use (the target
    update's, for a faithful calibration); shadows train with the target's
    own config (``target.config``) and without dreaming.
    """
    y_m, y_n = _targets(target, members), _targets(target, non_members)
    lm, ln = target.logits(members).numpy(), target.logits(non_members).numpy()
    results = [AttackResult.of("loss_threshold", -cross_entropy(lm, y_m), -cross_entropy(ln, y_n))]
    if base is not None and shadows > 0:
        pool = LabeledImages(torch.cat([members.images, non_members.images]), list(members.labels) + list(non_members.labels),
                             {**non_members.class_names, **members.class_names})
        y = np.concatenate([y_m, y_n])
        rng = np.random.default_rng(seed)
        confs, ins = [], []
        for k in range(shadows):
            inside = rng.random(len(pool)) < 0.5
            shadow = copy.deepcopy(base)
            shadow.reconfigure(later_tasks=target.config.later_tasks, seed=target.config.seed + 1000 + k)
            part = pool.subset(np.flatnonzero(inside).tolist())
            shadow.learn_new_classes(part, dream=False, show_progress=False, privacy=privacy)
            confs.append(logit_confidence(shadow.logits(pool).numpy(), y))
            ins.append(inside)
            log.info("shadow update %d/%d done", k + 1, shadows)
        target_conf = logit_confidence(np.concatenate([lm, ln]), y)
        scores = lira_scores(target_conf, np.stack(confs), np.stack(ins))
        results.append(AttackResult.of(f"lira_{shadows}_shadows", scores[: len(y_m)], scores[len(y_m):]))
    return {"attacks": [asdict(r) for r in results]}


# -------------------------------------------------------- memorisation
def _real_normalised(learner: "Learner", data: LabeledImages) -> torch.Tensor:
    return learner.normalizer(to_unit_float(data.images.to(learner.device))).float()


def _features(learner: "Learner", x: torch.Tensor) -> torch.Tensor:
    return eval_features(learner.model, x, memory_format=learner._memory_format)


def _nn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``a``: distance to and index of its nearest row of ``b`` (RMS per coordinate)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    best_d, best_i = [], []
    for s in range(0, len(a), 256):
        d = torch.cdist(a[s : s + 256], b)
        v, i = d.min(dim=1)
        best_d.append(v)
        best_i.append(i)
    return torch.cat(best_d) / a.shape[1] ** 0.5, torch.cat(best_i)


def dream_memorisation(
    learner: "Learner", train: LabeledImages, test: LabeledImages, *, n_dreams: int = 256, seed: int = 0,
    png: str | Path | None = None, pairs: int = 8,
) -> dict[str, Any]:
    """Are dreams closer to the update's training images than to unseen images of the same classes?

    Train and test are cut to the same size, so without memorisation a
    dream's nearest neighbour is in the training half about half the time.
    Dreams are kept if the classifier assigns them one of these classes.
    """
    m = min(len(train), len(test))
    g = torch.Generator().manual_seed(seed)
    train = train.subset(torch.randperm(len(train), generator=g)[:m].tolist())
    test = test.subset(torch.randperm(len(test), generator=g)[:m].tolist())
    classes = set(learner.registry.indices_of(train.labels))
    dreams, labels = learner.dream(max(n_dreams, 4 * n_dreams if len(classes) < learner.num_classes else n_dreams), seed=seed)
    keep = torch.tensor([int(c) in classes for c in labels.tolist()])
    if keep.sum() >= 8:
        dreams = dreams[keep][:n_dreams]
    else:
        dreams = dreams[:n_dreams]
    dreams = dreams.to(learner.device)
    xr, xt = _real_normalised(learner, train), _real_normalised(learner, test)
    out: dict[str, Any] = {"n_dreams": len(dreams), "n_train": m, "n_test": m}
    for space, (d, r, t) in {
        "pixel": (dreams, xr, xt),
        "feature": (_features(learner, dreams), _features(learner, xr), _features(learner, xt)),
    }.items():
        d_train, i_train = _nn(d, r)
        d_test, _ = _nn(d, t)
        out[space] = {
            "median_nn_dist_to_train": float(d_train.median()),
            "median_nn_dist_to_test": float(d_test.median()),
            "ratio_train_over_test": float(d_train.median() / d_test.median().clamp_min(1e-12)),
            "fraction_closer_to_train": float((d_train < d_test).double().mean()),
        }
        if space == "pixel":
            pix_d, pix_i = d_train, i_train
    if png is not None:
        _closest_pairs_png(learner, dreams, xr, pix_d, pix_i, Path(png), pairs)
        out["png"] = str(png)
    return out


def _closest_pairs_png(learner: "Learner", dreams: torch.Tensor, real: torch.Tensor, dist: torch.Tensor,
                       idx: torch.Tensor, path: Path, pairs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = learner.normalizer.mean.view(1, -1, 1, 1).cpu()
    std = learner.normalizer.std.view(1, -1, 1, 1).cpu()

    def pixels(x: torch.Tensor) -> np.ndarray:
        img = (x.cpu() * std + mean).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        return img[..., 0] if img.shape[-1] == 1 else img

    order = torch.argsort(dist)[:pairs].tolist()
    fig, axes = plt.subplots(2, max(1, len(order)), figsize=(1.4 * max(1, len(order)), 3.2), squeeze=False)
    for j, k in enumerate(order):
        axes[0, j].imshow(pixels(dreams[k : k + 1]), cmap="gray")
        axes[0, j].set_title(f"d={float(dist[k]):.2f}", fontsize=7)
        axes[1, j].imshow(pixels(real[int(idx[k]) : int(idx[k]) + 1]), cmap="gray")
        for a in axes[:, j]:
            a.axis("off")
    axes[0, 0].text(-0.3, 0.5, "dream", transform=axes[0, 0].transAxes, ha="right", fontsize=8)
    axes[1, 0].text(-0.3, 0.5, "nearest\ntrain", transform=axes[1, 0].transAxes, ha="right", fontsize=8)
    fig.suptitle("dreams closest to the update's training images (pixel RMS distance)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------- persistence
def image_needles(images: torch.Tensor) -> list[bytes]:
    """The byte strings an image would leave in a file: uint8 NHWC and NCHW, float32 in [0, 1]."""
    x = images if images.dtype == torch.uint8 else (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
    needles: list[bytes] = []
    for img in x:
        needles += [img.permute(1, 2, 0).contiguous().numpy().tobytes(), img.contiguous().numpy().tobytes(),
                    (img.float() / 255).numpy().tobytes()]
    return needles


def persistence_scan(roots: Iterable[str | Path], images: torch.Tensor | Sequence[bytes]) -> list[str]:
    """Files under ``roots`` that contain the raw bytes of any image (empty list: nothing persisted)."""
    needles = list(images) if not isinstance(images, torch.Tensor) else image_needles(images)
    hits: list[str] = []
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                blob = p.read_bytes()
                if any(n in blob for n in needles):
                    hits.append(str(p))
    return hits
