"""Direct library use on digits, as a new user writes it: does the Learner work with its own defaults?

Two tasks of two scikit-learn digits each (about 280 training images per
task, 8x8 grey), ``LearnerConfig.short_budget(epochs=20, dream_iterations=100)``
and no other setting except the seed, which picks both the learner's seed and
the class order. After the second task the learner is evaluated on the test
images of the 4 classes. Target (issue 10): >= 85% for every seed.

    .venv/bin/python benchmarks/direct_digits.py --seeds 0 1 2 --threads 1 \
        --out benchmarks/results/direct-digits.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from abd_edge import Learner, LearnerConfig
from abd_edge.apps.bench import environment
from abd_edge.data import class_order, load_digits


def run_seed(seed: int, epochs: int, dream_iterations: int, tasks: int, per_task: int) -> dict:
    train, test = load_digits(train=True), load_digits(train=False)
    order = class_order(10, seed)[: tasks * per_task]
    cfg = dataclasses.replace(LearnerConfig.short_budget(epochs=epochs, dream_iterations=dream_iterations), seed=seed)
    learner = Learner(cfg)
    rows = []
    start = time.perf_counter()
    for t in range(tasks):
        classes = order[t * per_task : (t + 1) * per_task]
        rep = learner.learn_new_classes(train.select_labels(classes), dream=t < tasks - 1, show_progress=False)
        seen = order[: (t + 1) * per_task]
        acc = learner.evaluate(test.select_labels(seen))
        new_acc = learner.evaluate(test.select_labels(classes))
        old_acc = learner.evaluate(test.select_labels(order[: t * per_task])) if t else None
        rows.append({"task": t, "classes": classes, "seen_accuracy": acc, "new_classes_accuracy": new_acc,
                     "old_classes_accuracy": old_acc, "report": rep.to_dict()})
        print(f"seed {seed} task {t + 1}: classes {classes} accuracy {100 * acc:.1f}% "
              f"(new {100 * new_acc:.1f}%{'' if old_acc is None else f', old {100 * old_acc:.1f}%'})", flush=True)
    return {"seed": seed, "class_order": order, "final_accuracy": rows[-1]["seen_accuracy"], "tasks": rows,
            "seconds": time.perf_counter() - start, "config": learner.config.to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--dream-iters", type=int, default=100)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--classes-per-task", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/direct-digits.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [run_seed(s, args.epochs, args.dream_iters, args.tasks, args.classes_per_task) for s in args.seeds]
    finals = [r["final_accuracy"] for r in runs]
    doc = {
        "benchmark": "direct-digits",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"recipe": f"LearnerConfig.short_budget(epochs={args.epochs}, dream_iterations={args.dream_iters})",
                     "tasks": args.tasks, "classes_per_task": args.classes_per_task},
        "environment": environment(),
        "final_accuracy_mean": statistics.mean(finals),
        "final_accuracy_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "final_accuracy_min": min(finals),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"{'seed':>5}{'classes':>16}{'final %':>9}{'seconds':>9}")
    for r in runs:
        print(f"{r['seed']:>5}{str(r['class_order']):>16}{100 * r['final_accuracy']:>9.1f}{r['seconds']:>9.0f}")
    print(f"mean {100 * doc['final_accuracy_mean']:.1f}%  std {100 * doc['final_accuracy_std']:.1f}  "
          f"min {100 * doc['final_accuracy_min']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
