"""The settings of a differentially private local update (torch-free, so the device runtime can take one).

Kept apart from :mod:`abd_edge.config` (the learner's settings): a private
update is asked for per call, by a device or an application, and its
accounting lives beside it in :mod:`abd_edge.privacy.ledger`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import PrivacyError

ACCOUNTANTS = ("prv", "rdp")


MEAN_INIT_RULES = ("nearest_mean", "lda")
TRAINABLE_SETS = ("new_head", "head", "last_block", "all")


@dataclass
class PrivacyConfig:
    """A differentially private local update (DP-SGD through Opacus); docs/PRIVACY.md has the argument.

    ``target_epsilon``/``delta`` bound what the update's released model
    (and everything computed from it: the dreams, later updates) reveals
    about any one of its local images. ``target_epsilon=inf`` runs the same
    update without clipping or noise (BatchNorm still frozen): the
    baseline that separates the cost of freezing BN from the cost of noise.

    The schedule fields override the learner's ``later_tasks`` for private
    updates only: DP-SGD wants larger batches, more steps and a higher
    learning rate than a non-private update, because each step's gradient is
    a noisy average of clipped gradients (lr x max_grad_norm is the step
    scale; on the digits simulation lr 1 with norm 1 learned as much as
    lr 5, with 4x shorter head rows). ``trainable="new_head"`` (the default) trains the
    head rows of the update's new classes only, on the frozen features: the
    noise's norm grows with the square root of the number of trained
    parameters, and the old classes' rows stay exactly as released;
    ``"head"`` trains the whole head, ``"last_block"`` the last residual
    block and the head, ``"all"`` every non-BatchNorm layer (on digits at
    epsilon 8 the larger sets lost to the noise: docs/PRIVACY.md).
    ``mean_init_fraction=f`` (0 turns it off) first releases per-class
    sums of the local images' clipped penultimate features and per-class
    counts with the Gaussian mechanism, calibrated so that the release alone
    would cost ``f * target_epsilon``, and sets the head from the noisy class
    means (``mean_init_rule``); for ``f < 1`` DP-SGD then trains with noise
    calibrated so that the release and the DP-SGD steps *composed* in the
    accountant meet ``target_epsilon``; ``f = 1`` (the default) makes the
    release the whole update, no DP-SGD step, because on digits DP-SGD on the
    released head lost accuracy (abd_edge/privacy/mean_init.py,
    docs/PRIVACY.md). ``mean_init_clip`` is the features' clipping norm
    (None: a high quantile of the feature norms of dreamed,
    public images). ``augment_multiplicity=K`` averages K augmented views of each local image
    into its one per-sample gradient before clipping (same guarantee, lower
    variance, K times the forward cost). With ``target_epsilon=inf`` set
    ``lr`` to a non-private rate (clipping is off there).
    """

    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    trainable: str = "new_head"
    epochs: int | None = 20
    batch_size: int | None = 64
    lr: float | None = 1.0
    max_noise_multiplier: float = 30.0
    noise_seed: int | None = None  # None: derived from the learner's seed (reproducible, not cryptographically secure)
    clip_public: bool = True  # cap the dreamed (public) terms' gradient norm at max_grad_norm, for balance (not privacy)
    augment_multiplicity: int = 1  # views of each local image whose gradients are averaged before clipping (De et al., 2022)
    momentum: float | None = None  # None: the learner's later_tasks momentum
    mean_init_fraction: float = 1.0  # share of the budget for the class-mean release (0: off; 1: the release is the update)
    mean_init_clip: float | None = None  # feature clipping norm of that release (None: from dreamed features)
    mean_init_rule: str = "lda"  # "lda": every seen row, old means from dreams; "nearest_mean": new rows only

    @property
    def release_only(self) -> bool:
        """The class-mean release is the whole update (``mean_init_fraction=1``): a closed-form head, no training step."""
        return self.mean_init_fraction == 1

    @property
    def private(self) -> bool:
        return math.isfinite(self.target_epsilon)

    def validate(self) -> None:
        if not (self.target_epsilon > 0) or math.isnan(self.target_epsilon):
            raise PrivacyError(f"target_epsilon must be a positive number (inf for a non-private update), got {self.target_epsilon}")
        if not (0 < self.delta < 1):
            raise PrivacyError(f"delta must be in (0, 1), got {self.delta}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise PrivacyError(f"max_grad_norm (the per-sample clipping norm) must be positive and finite, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyError(f"accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if self.trainable not in TRAINABLE_SETS:
            raise PrivacyError(f"trainable must be one of {list(TRAINABLE_SETS)} (BatchNorm is always frozen), got {self.trainable!r}")
        if not (isinstance(self.augment_multiplicity, int) and self.augment_multiplicity >= 1):
            raise PrivacyError(f"augment_multiplicity must be an integer >= 1, got {self.augment_multiplicity!r}")
        if self.momentum is not None and not (0 <= self.momentum < 1):
            raise PrivacyError(f"momentum must be in [0, 1) or None, got {self.momentum}")
        if self.epochs is not None and self.epochs < 1:
            raise PrivacyError(f"epochs must be >= 1 or None, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise PrivacyError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise PrivacyError(f"lr must be positive and finite or None, got {self.lr}")
        if not (0 <= self.mean_init_fraction <= 1) or isinstance(self.mean_init_fraction, bool):
            raise PrivacyError(f"mean_init_fraction must be in [0, 1] (the share of target_epsilon spent on the class-mean "
                               f"release; 0 turns it off, 1 skips DP-SGD), got {self.mean_init_fraction!r}")
        if self.mean_init_rule not in MEAN_INIT_RULES:
            raise PrivacyError(f"mean_init_rule must be one of {list(MEAN_INIT_RULES)}, got {self.mean_init_rule!r}")
        if self.mean_init_clip is not None and not (self.mean_init_clip > 0 and math.isfinite(self.mean_init_clip)):
            raise PrivacyError(f"mean_init_clip (the feature clipping norm) must be positive and finite or None, got {self.mean_init_clip}")
        if not self.max_noise_multiplier > 0:
            raise PrivacyError(f"max_noise_multiplier must be positive, got {self.max_noise_multiplier}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_epsilon"] = encode_epsilon(self.target_epsilon)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrivacyConfig":
        d = dict(data)
        if "target_epsilon" in d:
            d["target_epsilon"] = float(d["target_epsilon"])
        return cls(**d)


def encode_epsilon(eps: float) -> float | str:
    """JSON has no infinity: a non-private update's epsilon is written as the string "inf"."""
    return "inf" if math.isinf(eps) else float(eps)
