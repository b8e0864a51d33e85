"""DP-SGD for a local update: the glue between the training loop's seam and Opacus.

Which gradient is private, which is public (docs/PRIVACY.md has the argument):

* private, per-sample clipped and noised: every term computed from a local
  image. The method's loss is evaluated on the real batch alone, so each
  row's loss (ABD: local CE + head CE on its features + feature
  distillation against the previous model) depends on that one image only;
  BatchNorm runs in eval mode with frozen statistics and affine parameters,
  so rows never interact and no statistic of the local data is computed.
  Opacus's GradSampleModule captures the per-row gradients, its DPOptimizer
  clips each to ``max_grad_norm``, sums, adds Gaussian noise of standard
  deviation ``noise_multiplier * max_grad_norm`` and divides by the
  *expected* batch size; its Poisson-sampling loader draws the rows.
* public, added after the noise: the method's loss on the dreamed batch
  alone (images from the generator, labels and distillation targets from the
  previous released model). It is a function of released models and of the
  current weights only, so adding its gradient is post-processing. The
  dreamed batch has a fixed size (the expected real batch), never the size
  of the Poisson draw, which is itself private.

Per step the update is ``(sum_i clip(g_i) + N(0, s^2 C^2)) / B + g_public``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..config import TrainConfig
from .config import PrivacyConfig, encode_epsilon
from ..engine import RunStep, ShuffledBatches, TrainingSetup, clip_norm
from ..errors import PrivacyError
from ..methods.base import Method, TaskContext
from ..class_statistics import ClassStatistics, backbone_fingerprint
from ..models.resnet import EVAL_BATCH
from .mean_init import (MeanRelease, dreamed_features, init_rows_from_means, lda_head, penultimate_features, public_feature_scale,
                        public_old_means, release_class_means)

log = logging.getLogger(__name__)


@dataclass
class LocalData:
    """What the class-mean release reads: the update's local images (uint8 as stored), their head-row
    labels, the learner's normaliser, and what is public to it: the released generator, earlier releases'
    means, and the class statistics of non-private data (class_statistics.py) where they hold for this backbone."""

    images: torch.Tensor
    labels: torch.Tensor
    normalize: Any
    dreams: nn.Module | None = None
    known_means: dict[int, tuple[torch.Tensor, float]] = dataclasses.field(default_factory=dict)  # earlier releases (mean_init.known_class_means)
    statistics: ClassStatistics | None = None


@dataclass
class PrivatePlan:
    """Everything fixed before a private update trains, checked before anything changes."""

    config: PrivacyConfig
    n_images: int
    batch_size: int  # the loader's nominal batch; Poisson draws vary around it
    epochs: int
    sample_rate: float
    expected_batch_size: int
    steps: int
    noise_multiplier: float  # 0 for a non-private (epsilon = inf) update
    release_noise_multiplier: float = 0.0  # the class-mean release's (mean_init.py); 0: none, or noiseless (epsilon = inf)

    @property
    def mean_init(self) -> bool:
        return self.config.mean_init_fraction > 0

    def accountant_history(self, steps: int | None = None) -> list[tuple[float, float, int]]:
        """The (noise multiplier, sample rate, steps) entries this update composes: the release, then DP-SGD."""
        head = [(self.release_noise_multiplier, 1.0, 1)] if self.mean_init and self.config.private else []
        return head + ([(self.noise_multiplier, self.sample_rate, self.steps if steps is None else steps)] if self.steps else [])

    def train_config(self, base: TrainConfig) -> TrainConfig:
        cfg = self.config
        return dataclasses.replace(base, epochs=self.epochs, batch_size=max(2, self.batch_size),
                                   lr=cfg.lr if cfg.lr is not None else base.lr,
                                   momentum=cfg.momentum if cfg.momentum is not None else base.momentum)


def plan_update(privacy: PrivacyConfig, n_images: int, base: TrainConfig, *, first_task: bool) -> PrivatePlan:
    """Validate a private update and find its noise multiplier, or raise PrivacyError (nothing trained yet)."""
    privacy.validate()
    if first_task:
        raise PrivacyError(
            "a private update needs a learner that has already learned its base classes: the first task trains the "
            "network from scratch, BatchNorm statistics included, on its data; learn the base classes (non-private, "
            "e.g. on the server) first, then make private updates"
        )
    n = n_images
    if n < 2:
        raise PrivacyError(f"a private update needs at least 2 local images, got {n}")
    if privacy.private and privacy.delta >= 1.0 / n:
        raise PrivacyError(
            f"delta={privacy.delta:g} is not below 1/N = 1/{n} = {1 / n:.3g}: such a delta allows releasing a whole "
            f"local image; choose delta well below 1/N (e.g. {min(1e-5, 0.1 / n):.1g})"
        )
    batch = min(privacy.batch_size or base.batch_size, n)
    epochs = privacy.epochs or base.epochs
    n_batches = math.ceil(n / batch)
    sample_rate = 1.0 / n_batches  # what Opacus derives from the loader's length
    steps = epochs * n_batches
    expected = max(1, int(n * sample_rate))  # Opacus's expected batch size
    sigma = sigma_release = 0.0
    if not privacy.private and privacy.release_only:
        # epsilon = inf with the default schedule: the release without noise and no training step, i.e. the private
        # update's schedule without its noise (what the benchmark's noiseless row and a fast device update need)
        return PrivatePlan(privacy, n, batch, epochs, sample_rate, expected, 0, 0.0, 0.0)
    if privacy.private:
        what = f"target_epsilon={privacy.target_epsilon:g} (delta={privacy.delta:g})"
        try:
            if privacy.mean_init_fraction > 0:
                sigma_release = noise_for_target(privacy.mean_init_fraction * privacy.target_epsilon, privacy.delta, [], 1.0, 1,
                                                 privacy.accountant)
            if privacy.release_only:  # the release is the whole update: no DP-SGD step
                return PrivatePlan(privacy, n, batch, epochs, sample_rate, expected, 0, 0.0, sigma_release)
            sigma = noise_for_target(privacy.target_epsilon, privacy.delta,
                                     [(sigma_release, 1.0, 1)] if privacy.mean_init_fraction > 0 else [],
                                     sample_rate, steps, privacy.accountant)
        except ValueError as e:
            raise PrivacyError(
                f"{what} is unreachable for {n} images with {steps} steps at sample rate {sample_rate:.3g}"
                f"{f' after a class-mean release of {privacy.mean_init_fraction:g} of it' if privacy.mean_init_fraction else ''}"
                f": {e} Raise epsilon, or lower epochs"
            ) from None
        if sigma > privacy.max_noise_multiplier:
            raise PrivacyError(
                f"target_epsilon={privacy.target_epsilon:g} needs a noise multiplier of {sigma:.3g} for {n} images, "
                f"{steps} steps at sample rate {sample_rate:.3g}, above max_noise_multiplier="
                f"{privacy.max_noise_multiplier:g}: the update would be noise. Raise epsilon, lower epochs, or gather "
                f"more local images"
            )
    return PrivatePlan(privacy, n, batch, epochs, sample_rate, expected, steps, sigma, sigma_release)


def noise_for_target(target_epsilon: float, delta: float, before: list[tuple[float, float, int]], sample_rate: float,
                     steps: int, accountant: str, tolerance: float = 0.01, max_sigma: float = 2000.0) -> float:
    """The smallest noise multiplier (to ``tolerance`` in epsilon) whose steps, composed after ``before``, meet the target.

    Without ``before`` this is Opacus's ``get_noise_multiplier`` (same
    search, same result); with it, the accountant composes the earlier
    entries (the class-mean release) and the DP-SGD steps in one history,
    so the update's epsilon is the composed one. Raises ValueError if even
    ``max_sigma`` does not meet the target.
    """
    from opacus.accountants.utils import create_accountant, get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not before:
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant=accountant, epsilon_tolerance=tolerance))
        acc = create_accountant(mechanism=accountant)

        def eps(sigma: float) -> float:
            acc.history = [*before, (sigma, sample_rate, steps)]
            return float(acc.get_epsilon(delta=delta))

        low, high, eps_high = 0.0, 10.0, eps(10.0)
        while eps_high > target_epsilon:
            low, high = high, 2 * high
            if high > max_sigma:
                raise ValueError(f"no noise multiplier up to {max_sigma:g} meets it (the earlier release alone spends "
                                 f"{eps(max_sigma):.3g}).")
            eps_high = eps(high)
        while target_epsilon - eps_high > tolerance:
            mid = (low + high) / 2
            e = eps(mid)
            if e < target_epsilon:
                high, eps_high = mid, e
            else:
                low = mid
        return high


def trainable_modules(model: nn.Module, trainable: str) -> nn.Module:
    """The modules whose (non-BatchNorm) parameters a ``trainable`` setting other than "all" trains."""
    head = model.get_classifier()  # type: ignore[operator]
    if trainable in ("head", "new_head"):
        return head
    if trainable == "last_block":
        return nn.ModuleList([model.blocks[-1], head])  # type: ignore[union-attr,index]
    raise PrivacyError(f"unknown trainable set {trainable!r}")


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class FrozenBNSetup(TrainingSetup):
    """A non-private update with BatchNorm frozen (eval mode, no affine gradient): epsilon = inf.

    It trains what the private update trains, with the same schedule,
    without clipping or noise, so the two differ only by the noise.
    """

    def __init__(self, model: nn.Module, plan: PrivatePlan, cfg: TrainConfig, device: torch.device,
                 rows: tuple[int, int] | None = None, local: LocalData | None = None, seed: int = 0) -> None:
        self.plan = plan
        self.release: MeanRelease | None = None
        if plan.mean_init:
            self.release = self._initialise_new_rows(model, rows, local, seed, cfg.micro_batch or EVAL_BATCH)
        self._flags = [(p, p.requires_grad) for p in model.parameters()]
        self._head = model.get_classifier()  # type: ignore[operator]
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        if plan.config.trainable == "new_head":
            # Only this update's classes' head rows move: every other row is restored after each step.
            # Restoring released values is post-processing, and it keeps the noise out of the old classes.
            assert rows is not None
            keep = torch.ones(self._head.out_features, dtype=torch.bool, device=self._head.weight.device)
            keep[rows[0] : rows[1]] = False
            self._kept = [(p, keep) for p in (self._head.weight, self._head.bias)]
            self._saved = [p.detach()[keep].clone() for p, _ in self._kept]
        for bn in _batchnorms(model):
            for p in bn.parameters():
                p.requires_grad_(False)
        if plan.config.trainable != "all":
            kept = {id(p) for p in trainable_modules(model, plan.config.trainable).parameters()}
            for p in model.parameters():
                if id(p) not in kept:
                    p.requires_grad_(False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # No optimizer where nothing trains: the first one imports torch._dynamo (about 150 MiB of a device's memory).
        optimizer = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay) if self.trains else None
        # Opacus clips per sample; a global clip of the noised sum would act on the wrong thing (eps=inf: as plain).
        super().__init__(model, optimizer, ShuffledBatches(plan.n_images, plan.batch_size, device),
                         None if plan.config.private else clip_norm(cfg))
        self.steps_taken = 0

    def _initialise_new_rows(self, model: nn.Module, rows: tuple[int, int] | None, local: LocalData | None,
                             seed: int, batch_size: int = EVAL_BATCH) -> MeanRelease:
        """The class-mean release (mean_init.py): new head rows at the noisy class means; nothing else changes."""
        if rows is None or local is None:
            raise PrivacyError("mean_init_fraction > 0 needs the update's new head rows and local images; "
                               "pass rows= and local= to make_setup, or set mean_init_fraction=0")
        pc = self.plan.config
        n_old = rows[0]
        lda = pc.mean_init_rule == "lda"
        backbone = backbone_fingerprint(model)  # the statistics' check and the release's record share it
        stats = local.statistics if local.statistics is not None and local.statistics.backbone == backbone else None
        known = public_old_means(stats, local.known_means) if lda else {}
        # Dreams only where nothing better is public: an old class with no statistics or release, the
        # covariance without statistics, or the clipping norm without statistics or a set clip.
        need_dreams = (lda and (stats is None or any(c not in known for c in range(n_old)))) or (
            pc.mean_init_clip is None and stats is None)
        dreams = dreamed_features(model, local.dreams, seed + 3, 1024 if lda else 256, n_old) if need_dreams else None
        if pc.mean_init_clip is not None:
            clip = pc.mean_init_clip
        elif stats is not None:
            clip = stats.norm_quantile
        else:
            clip = public_feature_scale(dreams[0])  # type: ignore[index]
        feats = penultimate_features(model, local.images, local.normalize, batch_size=batch_size)  # a memory plan's micro-batch
        device = feats.device
        release = release_class_means(feats, local.labels - n_old, rows[1] - n_old, clip, self.plan.release_noise_multiplier,
                                      torch.Generator(device=device).manual_seed(seed + 2))
        release.classes, release.backbone = list(range(n_old, rows[1])), backbone
        clip_source = "set" if pc.mean_init_clip is not None else ("statistics" if stats is not None else "dreams")
        release.old_sources = {"clip": clip_source} if not lda else {
            "statistics": sorted(c for c in range(n_old) if stats is not None and c in stats.rows),
            "releases": sorted(c for c in known if stats is None or c not in stats.rows),
            "dreams": sorted(c for c in range(n_old) if c not in known),
            "covariance": "statistics" if stats is not None else "dreams", "clip": clip_source}
        head = model.get_classifier()  # type: ignore[operator]
        scale = None
        if lda:
            scale = lda_head(head, n_old, release.means, release.noise_var, known=known, dreams=dreams,
                             covariance=stats.covariance if stats is not None else None)
        if scale is None:
            if lda:
                log.warning("class-mean release: dreams miss an old class; only the new rows are set (nearest mean)")
            scale = init_rows_from_means(head, n_old, release.means)
        log.info("class-mean release: noise multiplier %.3f, feature clip %.3g, rows scaled by %.3g",
                 release.noise_multiplier, clip, scale)
        return release

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        for bn in _batchnorms(model):
            bn.eval()  # normalise with the stored statistics and never update them

    def real_batch(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, augment: Any,
                   normalize: Any, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``augment_multiplicity`` views of each drawn image, an image's views on adjacent rows."""
        k = self.plan.config.augment_multiplicity
        return super().real_batch(images, labels, idx.repeat_interleave(k) if k > 1 else idx, augment, normalize, rng)

    def step(self, run: RunStep, method: Method, ctx: TaskContext, x: torch.Tensor, y: torch.Tensor, replay: Any) -> dict[str, torch.Tensor]:
        self.steps_taken += 1
        out = super().step(run, method, ctx, x, y, replay)
        self.restore_frozen_rows()
        return out

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        for (p, keep), saved in zip(self._kept, getattr(self, "_saved", [])):
            p[keep] = saved

    def close(self) -> None:
        for p, flag in self._flags:
            p.requires_grad_(flag)
            p.grad = None

    def ledger_fields(self) -> dict[str, Any]:
        return {"private": False, "epsilon": encode_epsilon(math.inf), "delta": None, "accountant": None,
                "noise_multiplier": 0.0, "steps": self.steps_taken, "sample_rate": None,
                "expected_batch_size": self.plan.batch_size, "max_grad_norm": None,
                "bn": "frozen", "trainable": self.plan.config.trainable, "config": self.plan.config.to_dict(),
                **self._release_fields()}

    def _release_fields(self) -> dict[str, Any]:
        return {} if self.release is None else {"mean_init": self.release.to_dict()}


class NoBatches:
    """No local batch at all: a private update whose class-mean release is the whole update (``mean_init_fraction=1``)."""

    steps_per_epoch = 0

    def epoch(self, rng: torch.Generator) -> Iterator[torch.Tensor]:
        return iter(())


class ReleaseOnlySetup(FrozenBNSetup):
    """The class-mean release and the head rule, no DP-SGD step: the accountant's history is the release alone.

    With epsilon = inf the release has no noise: the head is the LDA rule on
    the exact class means of the local images, and nothing is trained (the
    private update's schedule without its noise).

    On digits at epsilon 8 the LDA head from the release kept more of the
    non-private gain before DP-SGD touched the new rows than after
    (docs/PRIVACY.md), so the whole budget can go to the release.
    """

    trains = False

    def __init__(self, model: nn.Module, plan: PrivatePlan, cfg: TrainConfig, device: torch.device, seed: int,
                 rows: tuple[int, int] | None = None, local: LocalData | None = None) -> None:
        super().__init__(model, plan, cfg, device, rows, local, seed)
        self.batches = NoBatches()

    def ledger_fields(self) -> dict[str, Any]:
        pc = self.plan.config
        release = self._release_fields()
        if not pc.private:  # epsilon = inf: a noiseless release, the head rule, nothing trained
            return {**super().ledger_fields(), "steps": 0, "trainable": "none (class-mean head, no noise)", **release}
        eps = _epsilon(self.plan.accountant_history(), pc.accountant, pc.delta)
        release["mean_init"]["epsilon_alone"] = eps
        return {"private": True, "epsilon": eps, "delta": pc.delta, "accountant": pc.accountant, "noise_multiplier": 0.0,
                "steps": 0, "sample_rate": None, "expected_batch_size": None, "max_grad_norm": None, "bn": "frozen",
                "trainable": "none (class-mean release only)", "target_epsilon": pc.target_epsilon, "secure_rng": False,
                "config": pc.to_dict(), **release}


class PoissonBatches:
    """Index batches from Opacus's Poisson-sampling loader over the local images (and nothing else)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader = loader
        self.device = device

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def epoch(self, rng: torch.Generator) -> Iterator[torch.Tensor]:
        for (idx,) in self.loader:
            yield idx.to(self.device)


class DPSetup(FrozenBNSetup):
    """DP-SGD through Opacus on the local-data terms; dreamed terms added after the noise."""

    def __init__(self, model: nn.Module, plan: PrivatePlan, cfg: TrainConfig, device: torch.device, seed: int,
                 rows: tuple[int, int] | None = None, local: LocalData | None = None) -> None:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        super().__init__(model, plan, cfg, device, rows, local, seed)
        pc = plan.config
        # The private loader holds indices of the local images only: dreamed images never enter it.
        self.local_indices = TensorDataset(torch.arange(plan.n_images))
        loader = DataLoader(self.local_indices, batch_size=plan.batch_size)
        noise = torch.Generator(device=device).manual_seed(seed)
        self.train_mode(model)  # Opacus validates a module in training mode (with BatchNorm frozen in eval)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self.engine = PrivacyEngine(accountant=pc.accountant)
            self.gsm, self.optimizer, dp_loader = self.engine.make_private(
                module=model, optimizer=self.optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
                max_grad_norm=pc.max_grad_norm, poisson_sampling=True, clipping="flat", noise_generator=noise,
                grad_sample_mode="hooks", loss_reduction="mean",
            )
        dp_loader.batch_sampler.generator = torch.Generator().manual_seed(seed + 1)
        if self.release is not None:
            # The release is one Gaussian-mechanism step at sample rate 1; DP-SGD's steps compose after it.
            self.engine.accountant.history.append((plan.release_noise_multiplier, 1.0, 1))

        self.loader = dp_loader
        self.batches = PoissonBatches(dp_loader, device)
        assert abs(self.optimizer.expected_batch_size - plan.expected_batch_size) < 1e-9
        log.info("private update: noise multiplier %.3f, sample rate %.4f, %d steps, clipping norm %g",
                 plan.noise_multiplier, plan.sample_rate, plan.steps, pc.max_grad_norm)

    def replay_size(self, n_real: int) -> int:
        return self.plan.expected_batch_size  # fixed: the Poisson draw's size is private

    def step(self, run: RunStep, method: Method, ctx: TaskContext, x: torch.Tensor, y: torch.Tensor, replay: Any) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            # With only the head trained, no layer input requires grad; Opacus's full backward hooks still fire correctly.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return self._step(run, method, ctx, x, y, replay)

    def _step(self, run: RunStep, method: Method, ctx: TaskContext, x: torch.Tensor, y: torch.Tensor, replay: Any) -> dict[str, torch.Tensor]:
        opt = self.optimizer
        reported: dict[str, torch.Tensor] = {}
        public: tuple[torch.Tensor | None, ...] | None = None
        if replay is not None:
            self.gsm.disable_hooks()  # public pass: nothing captured per sample, never clipped per sample or counted
            try:
                out = run(x[:0], y[:0], replay)
                loss_public, parts = method.loss(ctx, out)
                public = self._public_gradient(loss_public)
            finally:
                self.gsm.enable_hooks()
            reported = {"replay_loss": loss_public.detach(), **{f"replay_{k}": v.detach() for k, v in parts.items()}}
        opt.zero_grad(set_to_none=True)
        if x.shape[0] > 0:
            out = run(x, y, None)
            loss_private, _ = method.loss(ctx, out)
            if not torch.isfinite(loss_private):
                raise FloatingPointError("private update diverged (non-finite loss on the local batch)")
            loss_private.backward()
            self._average_views()
        else:  # an empty Poisson draw: the step is noise alone, as the accountant assumes
            for p in self.params:
                p.grad_sample = torch.zeros((1, *p.shape), device=p.device, dtype=p.dtype)  # type: ignore[attr-defined]
        if opt.pre_step():  # clip per sample, sum, add noise, divide by the expected batch, tell the accountant
            if public is not None:
                for p, g in zip(self.params, public):
                    if g is not None:
                        p.grad.add_(g)  # type: ignore[union-attr]
            opt.original_optimizer.step()
            self.restore_frozen_rows()
        self.steps_taken += 1
        return reported

    def _average_views(self) -> None:
        """One per-sample gradient per image: the mean over its augmented views, before clipping.

        The loss is the mean over the B*K rows, and Opacus's "mean" reduction
        scales each row's captured gradient back to that row's own loss, so
        averaging an image's K rows gives the gradient of its mean loss over
        its views. Clipping that mean bounds the image's whole contribution.
        """
        k = self.plan.config.augment_multiplicity
        if k == 1:
            return
        for p in self.params:
            gs = p.grad_sample  # type: ignore[attr-defined]
            p.grad_sample = gs.reshape(gs.shape[0] // k, k, *gs.shape[1:]).mean(dim=1)  # type: ignore[attr-defined]

    def _public_gradient(self, loss: torch.Tensor) -> tuple[torch.Tensor | None, ...] | None:
        """Gradient of the dreamed-batch loss (run with hooks off), norm capped at C if ``clip_public``.

        The cap is not needed for privacy (the dreamed batch is public); it
        is a safeguard for balance: per-sample clipping bounds the private
        mean by C, while a raw public gradient is unbounded and could
        outweigh it. Capping it at the norm the private mean can reach keeps
        the two parts on one scale (on digits it did not bind: ~0.4 < C=1).
        """
        if not loss.requires_grad:
            return None
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        if not self.plan.config.clip_public:
            return grads
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))  # type: ignore[arg-type]
        factor = (self.plan.config.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        return tuple(None if g is None else g * factor for g in grads)

    def close(self) -> None:
        self.gsm._close()  # remove Opacus's hooks and per-sample buffers from the model
        super().close()

    def epsilon_spent(self) -> float:
        if not self.engine.accountant.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.engine.accountant.get_epsilon(delta=self.plan.config.delta))

    def ledger_fields(self) -> dict[str, Any]:
        pc = self.plan.config
        history = self.engine.accountant.history
        steps = sum(int(h[2]) for h in history) - (1 if self.release is not None else 0)  # the release is not a DP-SGD step
        release = self._release_fields()
        if release:
            release["mean_init"]["epsilon_alone"] = _epsilon([history[0]], pc.accountant, pc.delta)
        return {"private": True, "epsilon": self.epsilon_spent(), "delta": pc.delta, "accountant": pc.accountant,
                "noise_multiplier": self.plan.noise_multiplier, "steps": steps, "sample_rate": self.plan.sample_rate,
                "expected_batch_size": self.plan.expected_batch_size, "max_grad_norm": pc.max_grad_norm,
                "bn": "frozen", "trainable": pc.trainable, "target_epsilon": pc.target_epsilon,
                "secure_rng": False, "config": pc.to_dict(), **release}


def _epsilon(history: list[tuple[float, float, int]], accountant: str, delta: float) -> float:
    from opacus.accountants.utils import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def make_setup(plan: PrivatePlan, model: nn.Module, cfg: TrainConfig, device: torch.device, seed: int,
               rows: tuple[int, int] | None = None, local: LocalData | None = None) -> FrozenBNSetup:
    """``rows``: the head rows of this update's classes (``trainable="new_head"``, the class-mean release);
    ``local``: the update's images for the class-mean release (``mean_init_fraction > 0``)."""
    if plan.steps == 0 and plan.mean_init:
        return ReleaseOnlySetup(model, plan, cfg, device, seed, rows, local)
    if plan.config.private:
        return DPSetup(model, plan, cfg, device, seed, rows, local)
    return FrozenBNSetup(model, plan, cfg, device, rows, local, seed)
