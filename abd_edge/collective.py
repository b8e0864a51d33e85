"""The process group as training needs it: gradient averaging and global-batch statistics.

Kept apart from :mod:`abd_edge.parallel` (the sharded loop and the launcher)
so that dreaming and the engine can use it without an import cycle. See that
module for why the semantics are what they are.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; dL/dx = sum over ranks of dL/dy (every rank's loss depends on y)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


class Collective:
    """The process group as the training code needs it: sums with autograd, gradient averaging."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    @classmethod
    def from_environment(cls) -> "Collective | None":
        """The initialised default process group if it has more than one process, else None (the one-process path)."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        world = dist.get_world_size()
        return cls(dist.get_rank(), world) if world > 1 else None

    def refuse_single_process_options(self, time_budget_s: float | None, private: bool) -> None:
        """Options that only make sense in one process; raised before the call changes anything."""
        if time_budget_s is not None:
            raise ConfigError(f"time_budget_s ({time_budget_s}) would stop the {self.world} data-parallel processes "
                              "at different steps; leave it None when training in several processes")
        if private:
            raise ConfigError("a differentially private update runs in one process; this learner runs in "
                              f"{self.world} torch.distributed processes")

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce sum that gradients flow through (the backward pass sums gradients over ranks)."""
        return _AllReduceSum.apply(t)

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its sum over ranks (one all-reduce of a flat buffer).

        Each rank's loss must be its share of the global loss (a local mean
        weighted by local / global batch size): then the sum is the gradient
        of the global loss, including the parts that flow through the
        global-batch statistics of :func:`batch_mean_var`.
        """
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            k = g.numel()
            p.grad = flat[offset : offset + k].view_as(g).to(g.dtype)
            offset += k

    def max_abs_difference(self, module: nn.Module) -> float:
        """Largest |difference| of any parameter or buffer from rank 0's (0.0 when the ranks are in lockstep)."""
        flat = torch.cat([t.detach().reshape(-1).float() for t in module.state_dict().values()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)


# ------------------------------------------------------------ statistics
def batch_mean_var(
    x: torch.Tensor, collective: Collective | None, shift: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of an (N, C, H, W) batch, over all ranks' shards when distributed.

    ``shift``: a per-channel value equal on every rank near the mean (a BN
    layer's running mean), subtracted before squaring so that
    E[x^2] - E[x]^2 does not cancel catastrophically; without one the ranks'
    mean is all-reduced first (one more collective).
    """
    x = x.float()
    if collective is None:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        return mean, var
    if shift is None:
        shift = collective.sum(x.mean(dim=(0, 2, 3)).detach()) / collective.world
    shift = shift.detach().float()
    count = x.new_full((1,), float(x.shape[0] * x.shape[2] * x.shape[3]))
    xc = x - shift.view(1, -1, 1, 1)
    sums = collective.sum(torch.cat([xc.sum(dim=(0, 2, 3)), (xc * xc).sum(dim=(0, 2, 3)), count]))
    c = x.shape[1]
    n = sums[-1]
    m = sums[:c] / n
    var = (sums[c : 2 * c] / n - m * m).clamp_min(0)
    return m + shift, var


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the global batch's statistics in train mode (CPU and CUDA).

    Instances are ordinary ``nn.BatchNorm2d`` layers whose class is swapped
    for the duration of :func:`synced_batchnorm`; same parameters, same
    buffers, same eval-mode behaviour.
    """

    _collective: Collective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        mean, var = batch_mean_var(x, self._collective, self.running_mean)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = x.shape[0] * x.shape[2] * x.shape[3] * self._collective.world
                unbiased = var.detach() * (n / max(1, n - 1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        shape = (1, -1, 1, 1)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


@contextlib.contextmanager
def synced_batchnorm(module: nn.Module | None, collective: Collective | None) -> Iterator[None]:
    """Make every ``nn.BatchNorm2d`` of ``module`` a :class:`SyncedBatchNorm2d` for the block (no-op with one process)."""
    if module is None or collective is None:
        yield
        return
    layers = [m for m in module.modules() if type(m) is nn.BatchNorm2d]
    for m in layers:
        m.__class__ = SyncedBatchNorm2d
        m._collective = collective  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m in layers:
            m.__class__ = nn.BatchNorm2d
            del m._collective
