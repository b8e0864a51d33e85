"""Recipe probe: learn task 1 (+ dreaming) once, then try variants of the next task from the saved learner.

A full cifar10-5x2 run takes hours on 2 cores; most of the question "which
schedule for incremental tasks?" is answered after task 2. This program
learns the first task(s) and saves the learner, and later invocations load
it and learn the next task(s) with overridden settings, printing one JSON
line per task (accuracy on all seen classes, per task, losses, timing).

    # task 1 and its dreaming, saved (short-budget recipe, cifar10-5x2 split)
    python benchmarks/recipe_probe.py --save runs/probe-t1 --tasks 1
    # task 2 with two learning rates, one thread each, side by side, no dreaming after
    python benchmarks/recipe_probe.py --load runs/probe-t1 --tasks 1 --dream 0 --threads 1 --lr 0.01
    python benchmarks/recipe_probe.py --load runs/probe-t1 --tasks 1 --dream 0 --threads 1 --lr 0.1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from abd_edge import Learner
from abd_edge.apps.bench import BenchSpec, learner_config, load_benchmark_data
from abd_edge.data import class_order, split_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data/cifar10_jpeg.npz")
    ap.add_argument("--load", help="continue a learner saved by an earlier probe")
    ap.add_argument("--save", help="save the learner afterwards")
    ap.add_argument("--tasks", type=int, default=1, help="how many further tasks to learn")
    ap.add_argument("--method", default="abd")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dream", type=int, default=500, help="dreaming iterations after each task (0: none)")
    ap.add_argument("--lr", type=float, help="peak learning rate of incremental tasks")
    ap.add_argument("--head-balance", choices=["none", "weight_align"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the lines as a JSON list")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = BenchSpec(dataset="cifar10", data_root=a.data_root, epochs=a.epochs, dream_iters=a.dream)
    train, test = load_benchmark_data("cifar10", a.data_root)
    tasks = split_tasks(class_order(10, 0), 5)
    learner = Learner.load(a.load) if a.load else Learner(learner_config(spec, a.method))
    sets = {"dream.iterations": str(a.dream)}
    if a.lr is not None:
        sets["later_tasks.lr"] = str(a.lr)
    if a.head_balance:
        sets["head_balance"] = a.head_balance
    cfg = learner.config.with_overrides(sets)
    learner.reconfigure(later_tasks=cfg.later_tasks, head_balance=cfg.head_balance, dream=cfg.dream)
    lines = []
    for _ in range(a.tasks):
        t = learner.tasks_learned
        start = time.perf_counter()
        r = learner.learn_new_classes(train.select_labels(tasks[t]), show_progress=False, dream=a.dream > 0)
        seen = [c for task in tasks[: t + 1] for c in task]
        part = test.select_labels(seen)
        pred = learner.predict(part.images).labels
        per_task = []
        for task in tasks[: t + 1]:
            hits = [p == y for p, y in zip(pred, part.labels) if y in task]
            per_task.append(round(100 * sum(hits) / len(hits), 1))
        line = {
            "task": t + 1, "lr": learner.config.later_tasks.lr if t else learner.config.first_task.lr,
            "acc": round(100 * sum(p == y for p, y in zip(pred, part.labels)) / len(pred), 2), "per_task": per_task,
            "train_s": round(r.train_seconds), "img_per_s": round(r.train_images_per_second),
            "dream_s": round(r.dream_seconds), "seconds": round(time.perf_counter() - start),
            "first_epoch": {k: round(v, 3) for k, v in r.epoch_losses[0].items()},
            "last_epoch": {k: round(v, 3) for k, v in r.epoch_losses[-1].items()},
            "head_align_factor": r.head_align_factor, "train_accuracy": r.train_accuracy,
        }
        print(json.dumps(line), flush=True)
        lines.append(line)
    if a.save:
        learner.save(a.save)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(lines, f, indent=2)


if __name__ == "__main__":
    main()
