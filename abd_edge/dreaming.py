"""Dreaming: training the generator by inverting the frozen classifier.

After a task the learner keeps no data. Instead it trains a generator so
that its images, fed to the frozen classifier, (1) are classified
confidently, (2) cover the seen classes evenly, (3) reproduce the running
statistics stored in every BatchNorm layer, and (4) are locally smooth. The
BN-statistics term carries most of the information about the real data: the
running means and variances are a summary of it that the classifier keeps
anyway.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from .collective import Collective, batch_mean_var, synced_batchnorm
from .compiled import mark_step, maybe_compiled
from .config import BALANCE_UNITS, BalanceUnits, DreamConfig
from .microbatch import row_chunks
from .models.generator import Generator
from .models.resnet import eval_features
from .progress import progress

log = logging.getLogger(__name__)


# ----------------------------------------------------------------- loss terms
def content_loss(logits: torch.Tensor, temperature: float = 1000.0) -> torch.Tensor:
    """CE of temperature-scaled logits against their own argmax (confident samples)."""
    return F.cross_entropy(logits / temperature, logits.argmax(dim=1))


def class_balance_loss(
    logits: torch.Tensor, collective: Collective | None = None, units: BalanceUnits = "fraction"
) -> torch.Tensor:
    """How far the batch's mean softmax p is from uniform over the K classes: zero when it is even.

    ``units="fraction"`` is the paper's 1 + sum_k p_k log p_k / log K, at most 1
    whatever K. ``units="bits"`` is the same divergence, KL(p || uniform),
    divided by log 2 instead: equal to the paper's at K = 2, up to log2 K
    beyond. Normalising by log K makes a class dropped out of the dreams cost
    less the more classes there are (one of 8 missing: 0.06), while the
    BN-statistics term does not shrink with K; in bits the price of leaving
    classes out keeps its size as classes accumulate.

    With a ``collective`` (data-parallel dreaming) the mean runs over every rank's shard of the batch.
    """
    if units not in BALANCE_UNITS:
        raise ValueError(f"units must be one of {BALANCE_UNITS}, got {units!r}")
    k = logits.shape[1]
    if k < 2:
        return logits.new_zeros(())
    if collective is not None:
        probs = F.softmax(logits.float(), dim=1)
        sums = collective.sum(torch.cat([probs.sum(dim=0), probs.new_full((1,), float(probs.shape[0]))]))
        p = sums[:k] / sums[k]
    else:
        p = F.softmax(logits.float(), dim=1).mean(dim=0)
    divergence = math.log(k) + (p * torch.log(p.clamp_min(1e-12))).sum()  # KL(p || uniform) in nats
    return divergence / (math.log(2.0) if units == "bits" else math.log(k))


def bn_kl(
    batch_mean: torch.Tensor, batch_var: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """KL(N(M, V) || N(m, v)) per channel, averaged over channels.

    M, V: the layer's running statistics (what real data produced);
    m, v: the statistics of the synthetic batch.
    """
    v = batch_var + eps
    big_v = running_var + eps
    kl = 0.5 * torch.log(v / big_v) - 0.5 * (1.0 - (big_v + (running_mean - batch_mean) ** 2) / v)
    return kl.mean()


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Normalised 2-D Gaussian of standard deviation ``sigma`` (a true sigma, not the reference's sigma*sqrt(2))."""
    d = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def smoothness_loss(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """mean((x - blur(x))^2) with a depthwise Gaussian blur and reflect padding."""
    c = x.shape[1]
    size = kernel.shape[-1]
    weight = kernel.to(x.device, x.dtype).expand(c, 1, size, size)
    pad = size // 2
    blurred = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=c)
    return ((x - blurred) ** 2).mean()


class BNStatsHooks:
    """Forward hooks on every BatchNorm2d of a (frozen, eval-mode) classifier.

    Each hook measures the batch statistics of the layer's *input* and
    records their KL divergence from the layer's running statistics, so one
    forward pass of synthetic images yields the BN-statistics loss of every
    layer. Use as a context manager so that hooks never leak into a model
    that is exported or trained afterwards. With a ``collective`` the
    statistics are those of the batch over all ranks.
    """

    def __init__(self, model: nn.Module, collective: Collective | None = None) -> None:
        self.collective = collective
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.losses: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        with record_function("abd.bn_hooks"):
            if self.collective is not None:
                mean, var = batch_mean_var(inputs[0], self.collective, module.running_mean)  # type: ignore[arg-type]
            else:
                x = inputs[0].float()
                dims = (0, 2, 3)
                var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            self.losses.append(bn_kl(mean, var, module.running_mean, module.running_var))  # type: ignore[arg-type]

    def __enter__(self) -> "BNStatsHooks":
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.losses = []

    def pop_loss(self) -> torch.Tensor:
        """Mean over layers of the KL terms recorded since the last call."""
        if not self.losses:
            raise RuntimeError("no BatchNorm statistics were recorded: run a forward pass first")
        loss = torch.stack(self.losses).mean()
        self.losses = []
        return loss


@dataclass
class DreamLosses:
    total: torch.Tensor
    content: torch.Tensor
    balance: torch.Tensor
    bn: torch.Tensor
    smooth: torch.Tensor

    @classmethod
    def weighted(cls, parts: "list[tuple[float, DreamLosses]]") -> "DreamLosses":
        """The batch's losses from its micro-batches' (weights: their shares of the batch), detached."""
        if len(parts) == 1:
            return parts[0][1]
        names = ("total", "content", "balance", "bn", "smooth")
        return cls(*(sum(w * getattr(p, n).detach() for w, p in parts) for n in names))  # type: ignore[arg-type]

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "content", "balance", "bn", "smooth")}


def inversion_losses(
    x: torch.Tensor, logits: torch.Tensor, bn: torch.Tensor, cfg: DreamConfig, kernel: torch.Tensor,
    collective: Collective | None = None,
) -> DreamLosses:
    """The four weighted dreaming terms for one synthetic batch (this rank's shard of it, with a ``collective``)."""
    content = content_loss(logits.float(), cfg.content_temperature)
    balance = class_balance_loss(logits, collective, cfg.balance_units)
    smooth = smoothness_loss(x.float(), kernel)
    total = (
        cfg.content_weight * content
        + cfg.balance_weight * balance
        + cfg.bn_weight * bn
        + cfg.smooth_weight * smooth
    )
    return DreamLosses(total, content, balance, bn, smooth)


@dataclass
class DreamReport:
    iterations: int
    seconds: float
    first: dict[str, float]
    last: dict[str, float]

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(1, self.iterations)


def train_generator(
    generator: Generator,
    classifier: nn.Module,
    n_classes: int,
    cfg: DreamConfig,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast: "AutocastSpec | None" = None,
    show_progress: bool = True,
    iterations: int | None = None,
    deadline: float | None = None,
    collective: Collective | None = None,
    compile_backend: str | None = None,
    compile_mode: str | None = None,
) -> DreamReport:
    """Train ``generator`` for ``cfg.iterations`` against the frozen ``classifier``.

    The classifier is put in eval mode and its parameters are not given
    gradients (only the image gradient flows through it), which roughly
    halves the cost of its backward pass. Its original modes are restored.
    With a ``collective`` (abd_edge/parallel.py) each rank dreams an equal
    share of the batch, the batch-level terms (BN statistics, class balance)
    see the whole batch, and the generator's gradients are summed over ranks.
    ``compile_backend`` runs the generator, the classifier and its BN-statistics
    terms as one ``torch.compile`` graph (abd_edge/compiled.py; eager again if
    compiling fails); never with a ``collective``, whose all-reduces would
    break the graph.
    """
    iterations = cfg.iterations if iterations is None else iterations
    kernel = gaussian_kernel(cfg.blur_size, cfg.blur_sigma)
    was_training = classifier.training
    grad_flags = [p.requires_grad for p in classifier.parameters()]
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    generator.train()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    start = time.perf_counter()
    done = 0
    batch = cfg.batch_size if collective is None else max(2, cfg.batch_size // collective.world)
    try:
        with BNStatsHooks(classifier, collective) as hooks, synced_batchnorm(generator, collective):

            def dream_forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                """One graph for the compiler: the dreams, their logits and the BN terms the hooks record."""
                hooks.losses.clear()  # a compiled attempt that failed half-way may have recorded some
                x = generator(z)
                # all of the head's rows: the graph is then the same for every task (sliced outside, no recompiling)
                return x, classifier(x.contiguous(memory_format=memory_format)), hooks.pop_loss()

            backend = compile_backend if collective is None else None
            fast = maybe_compiled(dream_forward, backend, compile_mode) if backend is not None else None
            bar = progress(range(iterations), desc="dreaming", enabled=show_progress)
            for it in bar:
                mark_step(backend, compile_mode)
                z = generator.sample_latent(batch, rng)
                optimizer.zero_grad(set_to_none=True)
                parts: list[tuple[float, DreamLosses]] = []
                for a, b in row_chunks(batch, cfg.micro_batch):  # one slice unless a memory budget asks for more
                    share = (b - a) / batch
                    with _autocast(autocast):
                        if fast is not None:
                            with record_function("abd.dream_forward"):
                                x, logits, bn = fast(z[a:b])
                            logits = logits[:, :n_classes]
                        else:
                            with record_function("abd.dream_generator"):
                                x = generator(z[a:b])
                            with record_function("abd.dream_classifier"):
                                logits = classifier(x.contiguous(memory_format=memory_format))[:, :n_classes]
                            bn = hooks.pop_loss()
                    with record_function("abd.dream_losses"):
                        chunk = inversion_losses(x, logits, bn, cfg, kernel, collective)
                    with record_function("abd.dream_backward"):
                        # equal shards with a collective: this rank's share of the global loss
                        (chunk.total * (share / (collective.world if collective is not None else 1))).backward()
                    parts.append((share, chunk))
                    del x, logits
                losses = DreamLosses.weighted(parts)
                if collective is not None:  # gradients summed over ranks
                    collective.sum_gradients(generator.parameters())
                with record_function("abd.dream_optimizer"):
                    optimizer.step()
                done = it + 1
                if it == 0 or it == iterations - 1 or it % 50 == 0:
                    last = losses.as_floats()
                    if it == 0:
                        first = dict(last)
                    bar.set_postfix(loss=f"{last['total']:.3f}", bn=f"{last['bn']:.3f}")
                if deadline is not None and time.perf_counter() > deadline:
                    log.warning("dreaming stopped at iteration %d of %d: time budget reached", done, iterations)
                    break
    finally:
        classifier.train(was_training)
        for p, flag in zip(classifier.parameters(), grad_flags):
            p.requires_grad_(flag)
        generator.eval()
    seconds = time.perf_counter() - start
    log.info("dreaming: %d iterations in %.1f s, losses %s", done, seconds, last)
    return DreamReport(done, seconds, first, last)


# ---------------------------------------------------------------- autocast
@dataclass(frozen=True)
class AutocastSpec:
    device_type: str
    dtype: torch.dtype
    enabled: bool


def _autocast(spec: AutocastSpec | None) -> torch.autocast:
    if spec is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(spec.device_type, dtype=spec.dtype, enabled=spec.enabled)


# ------------------------------------------------------------------ replay
@dataclass
class ReplayBatch:
    """Synthetic images with the previous classifier's pseudo-labels and outputs.

    The previous classifier's logits and features are returned with the
    images because every method that replays also distils from that same
    forward pass: computing it once here saves a second pass.
    """

    images: torch.Tensor
    labels: torch.Tensor
    old_logits: torch.Tensor
    old_features: torch.Tensor

    def rows(self, start: int, end: int) -> "ReplayBatch":
        """Rows ``[start, end)`` of every field (one micro-batch's share)."""
        if start == 0 and end == self.images.shape[0]:
            return self
        return ReplayBatch(self.images[start:end], self.labels[start:end], self.old_logits[start:end],
                           self.old_features[start:end])


class ReplaySampler:
    """Samples dreamed images for the old classes, labelled by the previous classifier.

    With ``pool_batches == 0`` every call draws fresh latents (the paper).
    With ``pool_batches = P`` it draws P batches once and then serves them
    in a new random order each pass; since synthetic images are never
    augmented, their pseudo-labels and previous-model outputs are fixed and
    are cached too, which removes the generator and previous-model passes
    from most training steps (a CPU-budget option, off by default).
    """

    def __init__(
        self,
        generator: Generator,
        old_model: nn.Module,
        n_old: int,
        rng: torch.Generator,
        *,
        pool_batches: int = 0,
        batch_size: int = 128,
        memory_format: torch.memory_format = torch.contiguous_format,
        autocast: AutocastSpec | None = None,
        micro_batch: int | None = None,
        compile_backend: str | None = None,
    ) -> None:
        self.micro_batch = micro_batch  # images per generator pass when drawing (a memory budget's)
        # generator and previous classifier as one compiled graph (abd_edge/compiled.py); None: eager
        self._forward = maybe_compiled(self._dream_and_label, compile_backend)
        self.generator = generator
        self.old_model = old_model
        self.n_old = n_old
        self.rng = rng
        self.memory_format = memory_format
        self.autocast = autocast
        self._pool: ReplayBatch | None = None
        self._order: torch.Tensor | None = None
        self._cursor = 0
        if pool_batches > 0:
            parts = [self._draw(batch_size) for _ in range(pool_batches)]
            self._pool = ReplayBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in ReplayBatch.__dataclass_fields__))

    @torch.no_grad()
    def _draw(self, n: int) -> ReplayBatch:
        self.generator.eval()
        self.old_model.eval()
        z = self.generator.sample_latent(n, self.rng)
        parts = []
        for a, b in row_chunks(n, self.micro_batch):  # eval mode: slices give the same images as one pass
            with _autocast(self.autocast):
                x, logits, feats = self._forward(z[a:b])
            parts.append((x.float(), logits[:, : self.n_old].float(), feats.float()))
        x, logits, feats = (torch.cat(t) if len(parts) > 1 else t[0] for t in zip(*parts))
        return ReplayBatch(x, logits.argmax(dim=1), logits, feats)

    def _dream_and_label(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.generator(z).contiguous(memory_format=self.memory_format)
        logits, feats = self.old_model.forward_with_features(x)  # type: ignore[operator]
        return x, logits, feats

    def sample(self, n: int) -> ReplayBatch:
        if self._pool is None:
            return self._draw(n)
        total = self._pool.images.shape[0]
        if self._order is None or self._cursor + n > total:
            self._order = torch.randperm(total, generator=self.rng, device=self.rng.device)
            self._cursor = 0
        idx = self._order[self._cursor : self._cursor + n]
        self._cursor += n
        p = self._pool
        return ReplayBatch(p.images[idx], p.labels[idx], p.old_logits[idx], p.old_features[idx])


# --------------------------------------------------------------- diversity
@dataclass
class DreamDiversity:
    """How well a generator's dreams stand for the classes it was trained on.

    ``class_fractions[k]``: share of dreamed images the classifier predicts
    as class k (uniform is 1/K). ``spread_ratio[k]``: mean distance of the
    penultimate features of dreams predicted as k to their centroid, divided
    by the same for real images of k (1 = as varied as real data, near 0 =
    one image dreamed over and over); only classes with real images at hand
    and at least two dreams predicted as them get one.
    """

    n_dreamed: int
    class_fractions: list[float]
    min_fraction: float
    normalized_entropy: float  # H(class_fractions) / log K: 1 = uniform
    spread_ratio: dict[int, float]
    mean_spread_ratio: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "n_dreamed": self.n_dreamed,
            "class_fractions": self.class_fractions,
            "min_fraction": self.min_fraction,
            "uniform_fraction": 1.0 / max(1, len(self.class_fractions)),
            "normalized_entropy": self.normalized_entropy,
            "spread_ratio": {str(k): v for k, v in self.spread_ratio.items()},
            "mean_spread_ratio": self.mean_spread_ratio,
        }


def _spread(features: torch.Tensor) -> float:
    return float((features - features.mean(dim=0, keepdim=True)).norm(dim=1).mean())


@torch.no_grad()
def measure_diversity(
    generator: Generator,
    classifier: nn.Module,
    n_classes: int,
    rng: torch.Generator,
    *,
    n: int = 512,
    real_images: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    batch_size: int = 256,
) -> DreamDiversity:
    """Dream ``n`` images and compare what the classifier sees in them with uniform classes and real spread.

    ``real_images`` are normalised inputs with class indices ``real_labels``
    (the call's own training images: the only real ones a data-free learner
    ever holds). Both models are left in the modes they came in.
    """
    g_mode, c_mode = generator.training, classifier.training
    generator.eval()
    classifier.eval()
    try:
        preds, feats = [], []
        for s in range(0, n, batch_size):
            x = generator(generator.sample_latent(min(batch_size, n - s), rng))
            logits, f = classifier.forward_with_features(x.contiguous(memory_format=memory_format))  # type: ignore[operator]
            preds.append(logits[:, :n_classes].float().argmax(1))
            feats.append(f.float())
        pred, feat = torch.cat(preds), torch.cat(feats)
        fractions = torch.bincount(pred, minlength=n_classes).float() / n
        nz = fractions[fractions > 0]
        entropy = float(-(nz * nz.log()).sum() / math.log(n_classes)) if n_classes > 1 else 1.0
        spread: dict[int, float] = {}
        if real_images is not None and real_labels is not None:
            real_feats = eval_features(classifier, real_images, batch_size=batch_size, memory_format=memory_format)
            for k in sorted(set(real_labels.tolist())):
                dreamed_k, real_k = feat[pred == k], real_feats[real_labels == k]
                if dreamed_k.shape[0] >= 2 and real_k.shape[0] >= 2:
                    spread[int(k)] = _spread(dreamed_k) / max(_spread(real_k), 1e-12)
    finally:
        generator.train(g_mode)
        classifier.train(c_mode)
    return DreamDiversity(
        n_dreamed=n,
        class_fractions=[float(v) for v in fractions],
        min_fraction=float(fractions.min()),
        normalized_entropy=entropy,
        spread_ratio=spread,
        mean_spread_ratio=sum(spread.values()) / len(spread) if spread else None,
    )
