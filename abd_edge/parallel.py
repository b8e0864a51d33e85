"""Data-parallel training over torch.distributed processes (CPU with gloo, CUDA with NCCL).

Why not ``DistributedDataParallel`` as a wrapper: the loop calls
``model.forward_features`` (features and logits from one pass), which a DDP
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

Use it through ``torchrun --nproc_per_node N -m abd_edge.parallel ...`` or
``python -m abd_edge.parallel --nproc N ...``; a ``Learner`` created after
``torch.distributed.init_process_group`` with more than one process uses it
by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .collective import Collective
from .config import TrainConfig
from .engine import RunStep, TrainingSetup, batch_starts
from .methods.base import Method, TaskContext

log = logging.getLogger(__name__)


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
        super().__init__(model, optimizer, batches)
        self.collective = collective
        self.clip_norm = clip_norm

    @classmethod
    def sharded(cls, model: nn.Module, n: int, cfg: TrainConfig, device: torch.device, collective: Collective,
                seed: int) -> "DistributedSetup":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        assert isinstance(cfg.batch_size, int)
        clip = cfg.grad_clip_norm if isinstance(cfg.grad_clip_norm, (int, float)) else None
        return cls(model, optimizer, ShardedBatches(n, cfg.batch_size, device, collective, seed), collective, clip)

    def step(self, run: RunStep, method: Method, ctx: TaskContext, x: torch.Tensor, y: torch.Tensor,
             replay: Any) -> dict[str, torch.Tensor]:
        out = run(x, y, replay)
        loss, parts = method.loss(ctx, out)
        self.optimizer.zero_grad(set_to_none=True)
        # This rank's share of the global batch's mean loss; the gradients are then summed over ranks.
        (loss * (x.shape[0] / self.batches.global_size)).backward()
        self.collective.sum_gradients(self.model.parameters())
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.clip_norm)
        self.optimizer.step()
        return {"loss": loss, **parts}


# ------------------------------------------------------------ launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_from_environment(device: str | None) -> tuple[int, int]:
    """Join the process group torchrun (or :func:`launch`) described in the environment; returns (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _spawned(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    run(parse_args(argv))


def launch(nproc: int, argv: list[str]) -> None:
    """Start ``nproc`` local processes running :func:`run` (what ``torchrun --nproc_per_node`` would do)."""
    import torch.multiprocessing as mp

    mp.start_processes(_spawned, args=(nproc, _free_port(), argv), nprocs=nproc, start_method="spawn")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m abd_edge.parallel",
                                description="class-incremental run over N processes (torch.distributed)")
    p.add_argument("--nproc", type=int, default=1, help="start this many local processes (not with torchrun)")
    p.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    p.add_argument("--data-root", help="cifar10: the cifar10_jpeg.npz")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--max-tasks", type=int, help="stop after this many tasks")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--dream-iters", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present); each rank takes cuda:LOCAL_RANK")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="learner config override")
    p.add_argument("--save-state", help="rank 0 writes the final model's state_dict here (torch.save)")
    p.add_argument("--out", help="results JSON, written by rank 0")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """One class-incremental run; every rank calls it, rank 0 writes the results."""
    from .config import LearnerConfig
    from .data import class_order, load_cifar10_jpeg, load_digits, split_tasks
    from .learner import Learner

    torch.set_num_threads(args.threads)
    rank, world = init_from_environment(args.device)
    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    if args.dataset == "digits":
        train, test = load_digits(train=True), load_digits(train=False)
    else:
        train, test = load_cifar10_jpeg(args.data_root, train=True), load_cifar10_jpeg(args.data_root, train=False)
    labels = train.unique_labels()
    tasks = split_tasks([labels[i] for i in class_order(len(labels), args.seed)], args.tasks)
    cfg = LearnerConfig.short_budget(epochs=args.epochs, dream_iterations=args.dream_iters, seed=args.seed,
                                     device=device, max_classes=len(labels))
    if args.set:
        cfg = cfg.with_overrides(dict(kv.split("=", 1) for kv in args.set))
    learner = Learner(cfg)
    stream = tasks[: args.max_tasks] if args.max_tasks else tasks
    rows = []
    start = time.perf_counter()
    for t, classes in enumerate(stream):
        rep = learner.learn_new_classes(train.select_labels(classes), dream=t < len(tasks) - 1, show_progress=False)
        seen = test.select_labels([c for task in tasks[: t + 1] for c in task])
        acc = learner.evaluate(seen)
        ips = torch.tensor([rep.train_images_per_second], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(ips)  # each rank trained on its shard: the run's rate is the sum
        rows.append({"task": t + 1, "accuracy": acc, "train_seconds": rep.train_seconds,
                     "train_images_per_second": float(ips), "dream_seconds": rep.dream_seconds,
                     "dream_seconds_per_iteration": rep.dream_seconds_per_iteration})
        if rank == 0:
            print(f"[{world} process(es)] task {t + 1}/{len(stream)}: accuracy {100 * acc:.2f}%  "
                  f"train {rep.train_seconds:.1f}s ({float(ips):.0f} img/s)  dream {rep.dream_seconds:.1f}s", flush=True)
    total = time.perf_counter() - start
    collective = Collective.from_environment()
    lockstep = collective.max_abs_difference(learner.model) if collective is not None else 0.0
    doc = {"world_size": world, "args": {k: v for k, v in vars(args).items() if k != "nproc"}, "tasks": rows,
           "final_accuracy": rows[-1]["accuracy"], "seconds_total": total,
           "max_abs_difference_from_rank0": lockstep}
    if rank == 0:
        if args.save_state:
            torch.save(learner.model.state_dict(), args.save_state)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(doc, indent=2))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return doc if rank == 0 else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        launch(args.nproc, sys.argv[1:] if argv is None else argv)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
