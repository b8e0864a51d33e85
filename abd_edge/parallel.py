"""Data-parallel training over torch.distributed processes (CPU with gloo, CUDA with NCCL).

Why not ``DistributedDataParallel`` as a wrapper: the loop calls
``model.forward_with_features`` (logits and features from one pass), which a DDP
wrapper does not see, and the previous classifier and the generator are
trained or read in ways a wrapper around ``forward`` does not cover. The
same semantics are simpler to state directly:

* every rank holds the whole task in memory and the same model; each global
  batch of the one-process run is cut into equal contiguous shards, one per
  rank, from a permutation every rank draws from the same seed
  (:class:`ShardedBatches`, the in-memory equivalent of
  ``DistributedSampler``);
* each rank backpropagates its share of the global batch's mean loss, the
  gradients are summed over ranks in one all-reduce, then clipped (:class:`DistributedSetup`), so every rank takes
  the same optimizer step and the models stay identical;
* BatchNorm in train mode normalises with the statistics of the global
  batch (:func:`synced_batchnorm`, a CPU-capable SyncBatchNorm: torch's own
  is GPU-only), so the running statistics are those of the global batch on
  every rank. Dreaming depends on them: it matches them;
* dreaming is split across ranks: each rank dreams an equal share of the
  dream batch, the BN-statistics and class-balance terms are computed from
  the global batch through a differentiable all-reduce, and the generator's
  gradients are averaged like the classifier's. Training the generator on
  rank 0 alone and broadcasting it would leave the other ranks idle for
  what is, on a CPU, most of a task's time.

With equal shards this is the one-process update on the global batch up to
floating-point summation order (tested). Augmentation and replay draw from a
per-rank random stream (rank 0's is the one-process stream).

Use it through ``torchrun --nproc_per_node N -m abd_edge.apps.parallel ...`` or
``python -m abd_edge.apps.parallel --nproc N ...`` (the launcher, an
application); a ``Learner`` created after
``torch.distributed.init_process_group`` with more than one process uses it
by itself.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .collective import Collective
from .config import TrainConfig
from .engine import TrainingSetup, batch_starts, clip_norm


# ------------------------------------------------------------- training
class ShardedBatches:
    """Each global batch of the one-process run, cut into one equal contiguous shard per rank.

    The permutation comes from a generator seeded alike on every rank (not
    from the loop's per-rank stream), so the shards of a step partition the
    global batch. A last global batch with fewer images than ranks is dropped.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, collective: Collective, seed: int) -> None:
        self.n, self.batch_size, self.device, self.collective = n, batch_size, device, collective
        starts = batch_starts(n, batch_size)
        if starts and n - starts[-1] < collective.world:
            starts.pop()
        self.starts = starts
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.global_size = 0  # images in the current step's global batch

    @property
    def steps_per_epoch(self) -> int:
        return len(self.starts)

    def epoch(self, rng: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.gen, device=self.gen.device).to(self.device)
        for s in self.starts:
            batch = order[s : s + self.batch_size]
            self.global_size = batch.shape[0]
            yield batch[self.collective.shard(batch.shape[0])]


class DistributedSetup(TrainingSetup):
    """The plain update with gradients averaged over ranks before the (global-norm) clip and the optimizer step."""

    batches: ShardedBatches

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: ShardedBatches,
                 collective: Collective, clip_norm: float | None) -> None:
        super().__init__(model, optimizer, batches, clip_norm)
        self.collective = collective

    @classmethod
    def sharded(cls, model: nn.Module, n: int, cfg: TrainConfig, device: torch.device, collective: Collective,
                seed: int) -> "DistributedSetup":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        assert isinstance(cfg.batch_size, int)
        return cls(model, optimizer, ShardedBatches(n, cfg.batch_size, device, collective, seed), collective,
                   clip_norm(cfg))

    def backward(self, loss: torch.Tensor, x: torch.Tensor) -> None:
        # This rank's share of the global batch's mean loss; the gradients are then summed over ranks
        # (the base step clips the sum and steps, the same on every rank).
        (loss * (x.shape[0] / self.batches.global_size)).backward()
        self.collective.sum_gradients(self.model.parameters())
