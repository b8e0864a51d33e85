"""Launcher for a class-incremental run over N torch.distributed processes.

``python -m abd_edge.apps.parallel --nproc N ...`` starts N local processes;
``torchrun --nproc_per_node N -m abd_edge.apps.parallel ...`` does the same
across nodes. The data-parallel training itself is in :mod:`abd_edge.parallel`
(the engine); this module only joins the process group, runs the stream and
writes the results, so it sits with the other applications.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from abd_edge.collective import Collective


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
    p = argparse.ArgumentParser(prog="python -m abd_edge.apps.parallel",
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
    from abd_edge.config import LearnerConfig
    from abd_edge.data import class_order, load_cifar10_jpeg, load_digits, split_tasks
    from abd_edge.learner import Learner

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
