"""Device update cost: local images x epochs x dreaming iterations (x memory budget) -> seconds, peak MiB, accuracy.

    # once: the server's task-1 bundle of cifar10-5x2 (seed 0, the simulation's server recipe)
    python benchmarks/device_update.py --make-bundle runs/server --data cifar10_jpeg.npz --threads 1
    # (--generator abd_compact: the same server task with the compact generator in the bundle)
    # then any number of device updates against copies of it
    python benchmarks/device_update.py --bundle runs/server/bundle --data cifar10_jpeg.npz --threads 1 \\
        --variant images=10000,epochs=1,dream=40 --variant images=10000,epochs=1,dream=40,mem=1024 \\
        --out benchmarks/results/device-update-cifar10.json

Each variant runs in a fresh Python process that holds what a device
holds: the local images of task 2 as uint8 (nothing else of the data set)
and the bundle. It opens a copy of the bundle with ``abd_edge.runtime``,
runs ``learn_new_classes`` with a ``DeviceBudget``, and only afterwards
loads the test images of the 4 classes seen to measure accuracy through
ONNX Runtime. The peak is the whole process's resident memory during the
update (torch included), as the runtime's report gives it. Timings on a
shared machine are inflated by other work: each row records the load
average (``os.getloadavg``) before and after.

Variant keys: ``images`` (a class-balanced subset of the 10,000 local
images), ``epochs``, ``dream`` (dreaming iterations), ``mem``
(``max_memory_mb``), ``batch`` (training batch), ``pool`` (``replay_pool_batches``),
``seed`` (0: the first task's images in their order, or a subset in that
order; another seed: another subset, or all of them, in shuffled order), ``eps`` (``PrivacyConfig(target_epsilon=eps)``
at its defaults; ``eps=inf``: the class-mean head from the exact means,
nothing trained, docs/PRIVACY.md).

A server bundle made before class statistics existed gains them without
retraining (``Learner.record_class_statistics`` on task 1's images):

    python benchmarks/device_update.py --statistics-bundle runs/server-stats --from-learner runs/server/learner \
        --data cifar10_jpeg.npz --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

KEYS = {"images": int, "epochs": int, "dream": int, "mem": float, "batch": int, "pool": int, "seed": int, "eps": float}


def parse_variant(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"images": 10_000, "epochs": 1, "dream": 40, "mem": None, "batch": None, "pool": None, "seed": 0, "eps": None}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in KEYS:
            raise SystemExit(f"unknown variant key {key!r} in {text!r}; expected {sorted(KEYS)}")
        out[key] = None if value.lower() == "none" else KEYS[key](value)
    return out


def task_split(seed: int = 0, tasks: int = 5) -> list[list[int]]:
    from abd_edge.data import class_order, split_tasks

    return split_tasks([int(c) for c in class_order(10, seed)], tasks)


def make_bundle(out: Path, data: str, threads: int, generator: str | None = None) -> None:
    """Task 1 of cifar10-5x2 on the server (the simulation's recipe: 5 epochs, 500 dreaming iterations), exported.

    ``generator`` (e.g. "abd_compact") replaces the paper's generator: the one
    the bundle ships is the one every device update trains.
    """
    import torch

    from abd_edge.apps.bench import BenchSpec, learner_config, load_benchmark_data
    from abd_edge.apps.simulate import _uint8
    from abd_edge.export import export_bundle
    from abd_edge.learner import Learner

    torch.set_num_threads(threads)
    train, _ = load_benchmark_data("cifar10", data)
    first = task_split()[0]
    cfg = learner_config(BenchSpec(dataset="cifar10", data_root=data, tasks=5, seed=0, generator=generator), "abd")
    learner = Learner(cfg)
    start = time.perf_counter()
    learner.learn_new_classes(_uint8(train).select_labels(first), show_progress=False)
    seconds = time.perf_counter() - start
    learner.save(out / "learner")
    export_bundle(learner, out / "bundle")
    (out / "info.json").write_text(json.dumps({"server_seconds": seconds, "classes": first, "threads": threads,
                                               "load_after": os.getloadavg(), "config": cfg.to_dict()}, indent=1, default=str))
    print(f"server task 1 in {seconds:.0f} s -> {out / 'bundle'}")


def statistics_bundle(out: Path, learner_dir: Path, data: str, threads: int) -> None:
    """A saved server learner (task 1) with class statistics of task 1's training images, exported to ``out/bundle``."""
    import torch

    from abd_edge.apps.bench import load_benchmark_data
    from abd_edge.apps.simulate import _uint8
    from abd_edge.export import export_bundle
    from abd_edge.learner import Learner

    torch.set_num_threads(threads)
    train, _ = load_benchmark_data("cifar10", data)
    learner = Learner.load(learner_dir)
    stats = learner.record_class_statistics(_uint8(train).select_labels(task_split()[0]))
    learner.save(out / "learner")
    export_bundle(learner, out / "bundle")
    print(f"class statistics of rows {list(stats.rows)} ({int(stats.counts.sum())} images) -> {out / 'bundle'}")


def prepare_data(data: str, cache: Path) -> None:
    """Task 2's training images and the test images of tasks 1-2, as uint8 NHWC, in one small file."""
    from abd_edge.apps.bench import load_benchmark_data
    from abd_edge.apps.simulate import _nhwc, _uint8

    train, test = load_benchmark_data("cifar10", data)
    steps = task_split()
    local, seen = _uint8(train).select_labels(steps[1]), _uint8(test).select_labels(steps[0] + steps[1])
    np.savez(cache, x=_nhwc(local.images), y=np.array(local.labels), test_x=_nhwc(seen.images),
             test_y=np.array(seen.labels))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One update in this (fresh) process; the parent reads the JSON it prints."""
    from abd_edge import runtime
    from abd_edge.runtime import DeviceBudget

    with np.load(spec["cache"]) as f:
        x, y = f["x"], f["y"]
    v = spec["variant"]
    if v["images"] < len(y) or v["seed"]:
        # seed 0: the data set's order (a subset keeps it); another seed: another subset, in shuffled order, so
        # the update's batches differ with everything else equal (a spread over seeds on one machine)
        pick = np.random.default_rng(v["seed"]).permutation(len(y))[: v["images"]]
        pick = pick if v["seed"] else np.sort(pick)
        x, y = x[pick], y[pick]
    x = np.ascontiguousarray(x)
    labels = [int(c) for c in y]
    device = runtime.open(spec["bundle"])
    pool = {} if v.get("pool") is None else {"replay_pool_batches": v["pool"]}  # unset: DeviceBudget's default
    if v.get("eps") is not None:
        from abd_edge.privacy.config import PrivacyConfig

        pool["privacy"] = PrivacyConfig(target_epsilon=v["eps"])
    budget = DeviceBudget(epochs=v["epochs"], dream_iterations=v["dream"], batch_size=v["batch"],
                          threads=spec["threads"], max_memory_mb=v["mem"], **pool)
    load_before = os.getloadavg()
    rep = device.learn_new_classes((x, labels), budget=budget)
    load_after = os.getloadavg()
    del x, labels
    with np.load(spec["cache"]) as f:
        acc = device.evaluate(f["test_x"], [int(c) for c in f["test_y"]])
    return {
        # the pool as run (None: the bundle's, 0 here)
        "variant": {**v, "pool": budget.replay_pool_batches}, "accuracy": acc,
        "seconds": rep.seconds_total, "seconds_train": rep.seconds_train,
        "seconds_dream": rep.seconds_dream, "seconds_export": rep.seconds_export, "peak_rss_mb": rep.peak_rss_mb,
        "held_mb_at_start": rep.memory.get("held_mb"), "memory_plan": rep.memory, "budget_respected": rep.budget_respected,
        "train_accuracy": rep.train_accuracy, "stopped_early": rep.stopped_early, "threads": spec["threads"],
        "loadavg_before": load_before, "loadavg_after": load_after,
    }


def run_variant(variant: dict[str, Any], bundle: Path, cache: Path, threads: int, work: Path) -> dict[str, Any]:
    copy = work / "bundle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    spec = {"variant": variant, "bundle": str(copy), "cache": str(cache), "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ABD_EDGE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"variant": variant, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'images':>6} {'epochs':>6} {'dream':>5} {'pool':>4} {'cap MiB':>7} {'eps':>4} {'seconds':>7} {'train':>6} {'dream s':>7} "
            f"{'export':>6} {'peak MiB':>8} {'held':>5} {'fits':>4} {'acc %':>6} {'load':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        v = r["variant"]
        cap = "-" if v["mem"] is None else f"{v['mem']:.0f}"
        eps = "-" if v.get("eps") is None else f"{v['eps']:g}"
        if "error" in r:
            lines.append(f"{v['images']:>6} {v['epochs']:>6} {v['dream']:>5} {v['pool'] or 0:>4} {cap:>7} {eps:>4}  error: {r['error']}")
            continue
        held = r["held_mb_at_start"]
        fits = {True: "yes", False: "NO", None: "-"}[r["budget_respected"]]
        load = f"{r['loadavg_before'][0]:.1f}/{r['loadavg_after'][0]:.1f}"
        lines.append(
            f"{v['images']:>6} {v['epochs']:>6} {v['dream']:>5} {v.get('pool') or 0:>4} {cap:>7} {eps:>4} {r['seconds']:>7.1f} {r['seconds_train']:>6.1f} "
            f"{r['seconds_dream']:>7.1f} {r['seconds_export']:>6.1f} {r['peak_rss_mb']:>8.0f} "
            f"{'-' if held is None else f'{held:.0f}':>5} {fits:>4} {100 * r['accuracy']:>6.1f} {load:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="cifar10_jpeg.npz (or a CIFAR-10 directory)")
    ap.add_argument("--bundle", type=Path, help="the task-1 bundle to update (a copy per variant)")
    ap.add_argument("--make-bundle", type=Path, metavar="DIR", help="train task 1 on the server side and export DIR/bundle")
    ap.add_argument("--statistics-bundle", type=Path, metavar="DIR",
                    help="with --from-learner: record task 1's class statistics and export DIR/bundle")
    ap.add_argument("--from-learner", type=Path, help="a saved task-1 learner (--make-bundle's DIR/learner)")
    ap.add_argument("--generator", help="with --make-bundle: the generator to ship (default the paper's 'abd'; 'abd_compact')")
    ap.add_argument("--variant", action="append", default=[], help="e.g. images=10000,epochs=1,dream=40,mem=1024 or eps=inf,dream=0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=float))
        return
    if args.make_bundle:
        make_bundle(args.make_bundle, args.data, args.threads, args.generator)
        return
    if args.statistics_bundle:
        if not args.from_learner or not args.data:
            ap.error("--statistics-bundle needs --from-learner and --data")
        statistics_bundle(args.statistics_bundle, args.from_learner, args.data, args.threads)
        return
    if not args.bundle or not args.data:
        ap.error("--bundle and --data are needed (or --make-bundle DIR --data ...)")
    from abd_edge.apps.bench import environment

    variants = [parse_variant(t) for t in (args.variant or [""])]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "local.npz"
        prepare_data(args.data, cache)
        for v in variants:
            rows.append(run_variant(v, args.bundle, cache, args.threads, Path(tmp)))
            print(format_table(rows).splitlines()[-1] if len(rows) > 1 else format_table(rows), flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                doc = {"benchmark": "device_update", "bundle": str(args.bundle), "task": "cifar10-5x2 task 2 into task 1",
                       "threads": args.threads, "environment": environment(), "rows": rows}
                args.out.write_text(json.dumps(doc, indent=2, default=float))
    print("\n" + format_table(rows))


if __name__ == "__main__":
    main()
