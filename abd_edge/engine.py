"""The one training loop every method shares.

It reads like the math of one step: take a real batch, augment it on the
device, append a dreamed batch if the method replays, run the current
classifier once over both, run the frozen previous classifier if the method
distils, and let the method turn the outputs into a loss.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from torch.profiler import record_function

from .compiled import mark_step, maybe_compiled
from .config import TrainConfig
from .data.augment import BatchAugment, to_unit_float
from .dreaming import AutocastSpec, ReplayBatch, ReplaySampler, _autocast
from .errors import TrainingDivergedError
from .methods.base import Method, StepOutputs, TaskContext
from .microbatch import proportional_chunks
from .models.resnet import EVAL_BATCH, CifarResNet
from .progress import progress

log = logging.getLogger(__name__)


@dataclass
class Normalizer:
    """Per-channel standardisation into the classifier's input space."""

    mean: torch.Tensor  # (C,)
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def to(self, device: torch.device) -> "Normalizer":
        return Normalizer(self.mean.to(device), self.std.to(device))


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of an iteration: linear warm-up, then step or cosine decay.

    The warm-up takes at most a fifth of the run. A budget that cuts the
    epochs keeps the recipe's ``warmup_epochs``: a device update's one epoch
    of a recipe that warms up for one was all warm-up, ending at the peak
    rate with no decay, and its accuracy swung with the last few batches
    (51.8-59.2% over three data orders of the cifar10 update).
    """
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), int(round(total_steps / 5)))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        span = max(1, total_steps - warmup)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / span))
    epoch = step // steps_per_epoch
    return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)


@dataclass
class EpochLog:
    epoch: int
    lr: float
    losses: dict[str, float]
    images: int
    seconds: float


@dataclass
class TrainResult:
    epochs: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0
    real_images: int = 0
    stopped_early: bool = False

    @property
    def images_per_second(self) -> float:
        return self.real_images / self.seconds if self.seconds > 0 else 0.0


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start offsets of the batches of an epoch; a last batch of one image is dropped (BatchNorm needs 2)."""
    starts = list(range(0, n, batch_size))
    if starts and n - starts[-1] < 2 and len(starts) > 1:
        starts.pop()
    return starts


class BatchSource(Protocol):
    """Where the loop's real batches come from: index tensors into the task's local images."""

    @property
    def steps_per_epoch(self) -> int: ...

    def epoch(self, rng: torch.Generator) -> Iterator[torch.Tensor]: ...


class ShuffledBatches:
    """The default local-data batch source: a fresh permutation per epoch, fixed-size batches."""

    def __init__(self, n: int, batch_size: int, device: torch.device) -> None:
        self.n, self.batch_size, self.device = n, batch_size, device
        self.starts = batch_starts(n, batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.starts)

    def epoch(self, rng: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=rng, device=rng.device).to(self.device)
        for s in self.starts:
            yield order[s : s + self.batch_size]


RunStep = Callable[[torch.Tensor, torch.Tensor, "ReplayBatch | None"], StepOutputs]


def clip_norm(cfg: TrainConfig) -> float | None:
    """The global gradient-norm bound a resolved train config asks for (None: no clipping)."""
    g = cfg.grad_clip_norm
    return float(g) if isinstance(g, (int, float)) and not isinstance(g, bool) else None


class TrainingSetup:
    """What the loop trains with: optimizer, local-data batches, and how one step's loss becomes an update.

    The loop owns everything a method sees (augmentation, replay, the
    forward passes, the schedule); a setup owns what differential privacy
    must replace: where the local batches come from (Opacus's Poisson
    sampler instead of a shuffle), which optimizer steps (a DPOptimizer that
    clips and noises per-sample gradients), which modules train (BatchNorm
    frozen), and how the loss of a step is split between private and public
    parts. This default is the plain non-private update, one forward pass
    over ``[real; dreamed]`` and one backward pass, then the global-norm clip
    (``clip_norm``, on for small tasks: abd_edge/auto_config.py) and the
    optimizer step.
    """

    #: False for a setup whose update is complete when it is made (no optimizer; the learner runs no loop)
    trains: bool = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, batches: BatchSource,
                 clip_norm: float | None = None, micro_batch: int | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.batches = batches
        self.clip_norm = clip_norm
        self.micro_batch = micro_batch  # rows per forward/backward pass (abd_edge/microbatch.py); None: all

    @classmethod
    def plain(cls, model: nn.Module, n: int, cfg: TrainConfig, device: torch.device) -> "TrainingSetup":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return cls(model, optimizer, ShuffledBatches(n, cfg.batch_size, device), clip_norm(cfg), cfg.micro_batch)

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def replay_size(self, n_real: int) -> int:
        """How many dreamed images go beside a real batch of ``n_real``."""
        return n_real

    def real_batch(
        self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, augment: BatchAugment,
        normalize: Normalizer, rng: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented, normalised rows of one real batch and their labels: one view per image here.

        A private update may return several views per image (augmentation
        multiplicity), whose gradients it averages per image before clipping.
        """
        return normalize(augment(to_unit_float(images[idx]), rng)), labels[idx]

    def step(
        self, run: RunStep, method: Method, ctx: TaskContext, x: torch.Tensor, y: torch.Tensor, replay: "ReplayBatch | None"
    ) -> dict[str, torch.Tensor]:
        """One update from one real batch (and its dreamed batch); returns the loss terms to report.

        With ``micro_batch`` the real and dreamed rows are cut into slices in
        the same proportions, each slice's loss weighted by its share of the
        rows, and the gradients accumulated before the one optimizer step.
        """
        n_replay = replay.images.shape[0] if replay is not None else 0
        total = x.shape[0] + n_replay
        reported: dict[str, torch.Tensor] = {}
        for (a0, a1), (b0, b1) in proportional_chunks(x.shape[0], n_replay, self.micro_batch):
            share = ((a1 - a0) + (b1 - b0)) / total
            xs = x[a0:a1]
            out = run(xs, y[a0:a1], replay.rows(b0, b1) if replay is not None else None)
            with record_function("abd.loss"):
                loss, parts = method.loss(ctx, out)
            if not reported:  # after the first forward pass, as before micro-batches (Opacus keeps its order)
                self.optimizer.zero_grad(set_to_none=True)
            with record_function("abd.backward"):
                self.backward(loss if share == 1 else loss * share, xs)
            for k, v in {"loss": loss, **parts}.items():
                reported[k] = reported.get(k, 0.0) + v.detach() * share
        with record_function("abd.optimizer"):
            if self.clip_norm is not None:
                # Why: on small tasks the first steps of a fresh or grown network blow the weights up (auto_config.py).
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.clip_norm)
            self.optimizer.step()
        return reported

    def backward(self, loss: torch.Tensor, x: torch.Tensor) -> None:
        """Gradients of one step's loss (``x``: the step's inputs, for setups that weight by batch share)."""
        loss.backward()

    def close(self) -> None:
        """Undo anything the setup attached to the model (hooks, flags)."""


def train_task(
    model: CifarResNet,
    method: Method,
    ctx: TaskContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    augment: BatchAugment,
    normalize: Normalizer,
    rng: torch.Generator,
    *,
    replay: ReplaySampler | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast: AutocastSpec | None = None,
    show_progress: bool = True,
    deadline: float | None = None,
    setup: TrainingSetup | None = None,
    compile_backend: str | None = None,
    compile_mode: str | None = None,
) -> TrainResult:
    """Train ``model`` in place on one task's data (already on the training device).

    ``setup`` supplies the optimizer, the local-data batches and the step
    (default: :meth:`TrainingSetup.plain`); the differentially private
    update of :mod:`abd_edge.privacy` passes its own. ``compile_backend``
    runs the current classifier's forward pass (in ``compile_mode``) and the
    previous classifier's through ``torch.compile`` (abd_edge/compiled.py;
    eager again if compiling fails).
    """
    n = images.shape[0]
    if setup is None:
        setup = TrainingSetup.plain(model, n, cfg, images.device)
    optimizer = setup.optimizer
    steps_per_epoch = setup.batches.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    old_model = ctx.old_model
    if old_model is not None:
        old_model.eval()
    setup.train_mode(model)
    forward = maybe_compiled(model.forward_with_features, compile_backend, compile_mode)
    # The teacher runs in its own graph without CUDA graphs: its outputs are kept beside the next step's.
    teacher = maybe_compiled(old_model.forward_with_features, compile_backend) if old_model is not None else None

    def run(x: torch.Tensor, y: torch.Tensor, rb: ReplayBatch | None) -> StepOutputs:
        """Forward ``[x; dreamed]`` through the current (and, if needed, the previous) classifier."""
        n_real = x.shape[0]
        old_logits = old_feats = None
        if rb is not None:
            x = torch.cat([x, rb.images])
            y = torch.cat([y, rb.labels])
        x = x.contiguous(memory_format=memory_format)
        with record_function("abd.forward"), _autocast(autocast):
            logits, feats = forward(x)
        if method.uses_old_model and teacher is not None:
            if n_real > 0:
                with record_function("abd.teacher_forward"), torch.no_grad(), _autocast(autocast):
                    ol, of = teacher(x[:n_real])
                old_logits, old_feats = ol[:, : ctx.n_old].float(), of.float()
                if rb is not None:
                    old_logits = torch.cat([old_logits, rb.old_logits])
                    old_feats = torch.cat([old_feats, rb.old_features])
            elif rb is not None:
                old_logits, old_feats = rb.old_logits, rb.old_features
        return StepOutputs(logits.float(), feats.float(), y, n_real, old_logits, old_feats)

    result = TrainResult()
    lr = cfg.lr  # what an epoch without steps reports
    start_time = time.perf_counter()
    step = 0
    bar = progress(range(total_steps), desc=f"train {method.name} ({ctx.n_old}->{ctx.n_seen} classes)", enabled=show_progress)
    try:
        for epoch in range(cfg.epochs):
            epoch_start = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            steps_done = 0
            seen = 0
            for idx in setup.batches.epoch(rng):
                mark_step(compile_backend, compile_mode)
                lr = lr_at(step, total_steps, steps_per_epoch, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with record_function("abd.augment"):
                    x, y = setup.real_batch(images, labels, idx, augment, normalize, rng)
                n_real = x.shape[0]
                rb = None
                if replay is not None:
                    with record_function("abd.replay_sample"):
                        rb = replay.sample(setup.replay_size(n_real))
                parts = setup.step(run, method, ctx, x, y, rb)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.detach()
                step += 1
                steps_done += 1
                seen += idx.numel()
                bar.update(1)
                if deadline is not None and time.perf_counter() > deadline:
                    result.stopped_early = True
                    break
            losses = {k: float(v) / max(1, steps_done) for k, v in sums.items()}
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch}: losses {losses}; nothing was changed (lower the learning rate)"
                )
            seconds = time.perf_counter() - epoch_start
            result.epochs.append(EpochLog(epoch, lr, losses, seen, seconds))
            result.real_images += seen
            if "loss" in losses:
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
            log.info("epoch %d/%d lr %.4g %s (%.0f img/s)", epoch + 1, cfg.epochs, lr,
                     " ".join(f"{k}={v:.4f}" for k, v in losses.items()), seen / max(seconds, 1e-9))
            if result.stopped_early:
                log.warning("training stopped after %d of %d steps: time budget reached", step, total_steps)
                break
    finally:
        setup.close()
        bar.close()
    result.seconds = time.perf_counter() - start_time
    return result


def weight_align(head: nn.Linear, n_old: int, n_seen: int) -> float:
    """Rescale the new classes' head rows to the mean norm of the old rows (Zhao et al., CVPR 2020).

    After an incremental task the new classes' weight vectors are longer
    than the old ones because only new classes had real data, which biases
    every prediction toward the newest classes. Returns the factor applied.
    """
    with torch.no_grad():
        norms = head.weight[:n_seen].norm(dim=1)
        old, new = norms[:n_old].mean(), norms[n_old:n_seen].mean()
        gamma = float(old / new.clamp_min(1e-12))
        head.weight[n_old:n_seen] *= gamma
        if head.bias is not None:
            head.bias[n_old:n_seen] *= gamma
    return gamma


@torch.no_grad()
def predict_logits(
    model: CifarResNet,
    images: torch.Tensor,
    normalize: Normalizer,
    n_seen: int,
    device: torch.device,
    *,
    batch_size: int = EVAL_BATCH,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast: AutocastSpec | None = None,
) -> torch.Tensor:
    """Logits over the seen classes, eval mode, batched; returns float32 on the CPU."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        for s in range(0, images.shape[0], batch_size):
            x = normalize(to_unit_float(images[s : s + batch_size].to(device, non_blocking=True)))
            with _autocast(autocast):
                outs.append(model(x.contiguous(memory_format=memory_format))[:, :n_seen].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, n_seen)
