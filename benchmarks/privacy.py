"""Privacy-utility benchmark: device updates at several epsilons against the non-private ones.

Protocol (digits by default, the device simulation's): the server learns the
first task's classes and every device starts from that model; the remaining
tasks arrive one by one as local updates with the device budget
(``abd_edge.apps.simulate.default_budget``). Rows, all from the same base model:

* ``never_updated``: the base model forever;
* ``finetune``: non-private update without replay;
* ``abd``: the non-private ABD update (BatchNorm trained, every layer);
* ``abd_bn_frozen``: ABD with BatchNorm frozen, every other layer trained, no
  clipping or noise (epsilon = inf): the cost of freezing BN alone;
* ``abd_bn_frozen_head``: the private update's trainable set (the new
  classes' head rows) and schedule without clipping or noise: adds the cost
  of training only those rows, so the eps rows' further loss is the noise's;
* ``abd_eps{E}``: ABD with DP-SGD at epsilon E (delta 1e-5).

Per row: accuracy on all seen classes after each update, the epsilon spent,
seconds and peak memory of each update, and after the last update a
membership-inference audit of that update's local images against unseen test
images of the same classes (loss threshold and LiRA-style with shadow
updates), plus the dream-memorisation audit. Writes JSON and a PNG, prints a
table.

    python benchmarks/privacy.py --threads 1 --out benchmarks/results/privacy-digits.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from abd_edge.apps.bench import BenchSpec, environment, learner_config, load_benchmark_data
from abd_edge.config import PrivacyConfig
from abd_edge.data import class_order, split_tasks
from abd_edge.learner import Learner
from abd_edge.privacy.audit import dream_memorisation, membership_audit
from abd_edge.resources import PeakRSS, current_rss_bytes
from abd_edge.apps.simulate import _uint8, default_budget


def apply_budget(learner: Learner, budget: Any, method: str) -> None:
    """What the device runtime does to a loaded learner before an update."""
    cfg = learner.config
    later = dataclasses.replace(cfg.later_tasks, epochs=budget.epochs, batch_size=budget.batch_size or cfg.later_tasks.batch_size)
    learner.reconfigure(later_tasks=later, dream=dataclasses.replace(cfg.dream, iterations=budget.dream_iterations), method=method)


def parse_privacy_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k] = json.loads(v) if v not in ("head", "all", "prv", "rdp") else v
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    train, test = load_benchmark_data(args.dataset, args.data_root)
    train, test = _uint8(train), _uint8(test)
    labels = train.unique_labels()
    order = [labels[i] for i in class_order(len(labels), args.seed)]
    steps = split_tasks(order, args.tasks)[: 1 + args.max_steps if args.max_steps else None]
    names = {lab: train.class_names.get(lab, str(lab)) for lab in labels}
    spec = BenchSpec(dataset=args.dataset, data_root=args.data_root, tasks=args.tasks, seed=args.seed)
    server = Learner(learner_config(spec, "abd"))
    t0 = time.perf_counter()
    server.learn_new_classes(train.select_labels(steps[0]), {lab: names[lab] for lab in steps[0]}, show_progress=False)
    server_seconds = time.perf_counter() - t0
    budget = default_budget(args.dataset)
    dp = parse_privacy_sets(args.dp_set or [])
    settings: list[tuple[str, str | None, PrivacyConfig | None]] = [("never_updated", None, None), ("finetune", "finetune", None),
                                                                    ("abd", "abd", None),
                                                                    ("abd_bn_frozen", "abd", PrivacyConfig(**{**dp, "target_epsilon": math.inf, "trainable": "all", "lr": args.frozen_lr})),
                                                                    ("abd_bn_frozen_head", "abd", PrivacyConfig(**{**dp, "target_epsilon": math.inf, "lr": args.frozen_head_lr}))]
    for eps in args.epsilons:
        settings.append((f"abd_eps{eps:g}", "abd", PrivacyConfig(target_epsilon=eps, delta=args.delta, **dp)))
    if args.only:
        settings = [s for s in settings if s[0] in args.only]
    rows: dict[str, Any] = {}
    for name, method, pc in settings:
        learner = copy.deepcopy(server)
        seen = list(steps[0])
        per_step = [{"step": 0, "classes_seen": len(seen), "accuracy": learner.evaluate(test.select_labels(seen))}]
        before_last = None
        for k, classes in enumerate(steps[1:], start=1):
            if method is None:
                seen += classes
                per_step.append({"step": k, "classes_seen": len(seen), "accuracy": None})
                continue
            apply_budget(learner, budget, method)
            if k == len(steps) - 1:
                before_last = copy.deepcopy(learner)
            local = train.select_labels(classes)
            rss0 = current_rss_bytes() or 0
            t = time.perf_counter()
            with PeakRSS() as peak:
                rep = learner.learn_new_classes(local, {lab: names[lab] for lab in classes}, show_progress=False, privacy=pc)
            seconds = time.perf_counter() - t
            seen += classes
            per_step.append({"step": k, "classes_seen": len(seen), "accuracy": learner.evaluate(test.select_labels(seen)),
                             "new_class_accuracy": learner.evaluate(test.select_labels(classes)),
                             "seconds": seconds, "train_seconds": rep.train_seconds, "dream_seconds": rep.dream_seconds,
                             "peak_rss_mb": peak.peak_mb, "peak_rss_increase_mb": (peak.peak_bytes - rss0) / 2**20,
                             "epsilon": rep.privacy.get("epsilon") if rep.privacy else "inf",
                             "noise_multiplier": rep.privacy.get("noise_multiplier") if rep.privacy else 0.0,
                             "n_images": rep.n_images})
            print(f"{name:>14} step {k}: acc {100 * per_step[-1]['accuracy']:.1f}% new {100 * per_step[-1]['new_class_accuracy']:.1f}% "
                  f"eps {per_step[-1]['epsilon']} {seconds:.1f}s", flush=True)
        row: dict[str, Any] = {"method": method, "privacy": pc.to_dict() if pc else None, "steps": per_step}
        if method is None:
            # never updated: evaluate the base model on all classes seen at each step
            for s in per_step[1:]:
                s["accuracy"] = _static_accuracy(server, test, order[: s["classes_seen"]])
        if method is not None and args.shadows >= 0:
            last = steps[-1]
            members, non_members = train.select_labels(last), test.select_labels(last)
            t = time.perf_counter()
            row["membership"] = membership_audit(learner, members, non_members, base=before_last, shadows=args.shadows,
                                                 privacy=pc, seed=args.seed)
            row["membership"]["seconds"] = time.perf_counter() - t
            if method == "abd" and learner.generator is not None:
                png = Path(args.out).with_name(Path(args.out).stem + f"-{name}-closest-dreams.png")
                row["dream_memorisation"] = dream_memorisation(learner, members, non_members, n_dreams=128, png=png)
        rows[name] = row
    doc = {"benchmark": "privacy-utility", "dataset": args.dataset, "tasks": args.tasks, "steps": steps, "seed": args.seed,
           "delta": args.delta, "budget": {k: v for k, v in dataclasses.asdict(budget).items() if k != "privacy"},
           "dp_overrides": dp, "server_seconds": server_seconds, "environment": environment(), "rows": rows,
           "command": " ".join(sys.argv)}
    doc["summary"] = summarize(doc)
    return doc


def _static_accuracy(server: Learner, test: Any, seen: list[Any]) -> float:
    """The base model's accuracy on all seen classes (classes it does not know count as errors)."""
    part = test.select_labels(seen)
    pred = server.predict(part.images).labels
    return sum(p == t for p, t in zip(pred, part.labels)) / len(part)


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    rows = doc["rows"]
    out: dict[str, Any] = {}
    if "abd" not in rows or "never_updated" not in rows:
        return out
    ref = [s["accuracy"] for s in rows["abd"]["steps"][1:]]
    static = [s["accuracy"] for s in rows["never_updated"]["steps"][1:]]
    for name, row in rows.items():
        accs = [s["accuracy"] for s in row["steps"][1:]]
        if not accs or accs[0] is None:
            continue
        kept = [(a - s) / (r - s) if r - s > 1e-9 else float("nan") for a, r, s in zip(accs, ref, static)]
        m = row.get("membership", {}).get("attacks", [])
        out[name] = {
            "final_accuracy": accs[-1],
            "gain_kept_final": kept[-1],
            "gain_kept_mean": sum(kept) / len(kept),
            "mia": {a["attack"]: {"auc": a["auc"], "tpr_at_1pct_fpr": a["tpr_at_1pct_fpr"]} for a in m},
            "update_seconds_mean": _mean([s.get("seconds") for s in row["steps"][1:]]),
            "peak_rss_mb_max": max((s.get("peak_rss_mb") or 0) for s in row["steps"][1:]),
            "peak_rss_increase_mb_max": max((s.get("peak_rss_increase_mb") or 0) for s in row["steps"][1:]),
        }
    return out


def _mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def print_table(doc: dict[str, Any]) -> None:
    head = f"{'row':>14} {'final acc %':>11} {'gain kept':>9} {'mean kept':>9} {'loss AUC':>8} {'LiRA AUC':>8} {'LiRA TPR@1%':>11} {'s/update':>8} {'peak MB':>8}"
    print(head + "\n" + "-" * len(head))
    for name, s in doc["summary"].items():
        mia = list(s["mia"].values())
        la = mia[0]["auc"] if mia else None
        lira = mia[1] if len(mia) > 1 else None

        def f(v: Any, fmt: str) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        print(f"{name:>14} {f(100 * s['final_accuracy'], '.1f'):>11} {f(s['gain_kept_final'], '.2f'):>9} {f(s['gain_kept_mean'], '.2f'):>9} "
              f"{f(la, '.3f'):>8} {f(lira['auc'] if lira else None, '.3f'):>8} {f(lira['tpr_at_1pct_fpr'] if lira else None, '.3f'):>11} "
              f"{f(s['update_seconds_mean'], '.1f'):>8} {f(s['peak_rss_mb_max'], '.0f'):>8}")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, row in doc["rows"].items():
        xs = [s["classes_seen"] for s in row["steps"]]
        ys = [100 * s["accuracy"] for s in row["steps"]]
        a1.plot(xs, ys, marker="o", label=name, ls="--" if "eps" not in name else "-")
    a1.set_xlabel("classes seen")
    a1.set_ylabel("accuracy on seen classes (%)")
    a1.set_ylim(0, 100)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    s = doc["summary"]
    names = [n for n in s if s[n]["mia"]]  # the last attack listed: the calibrated one when shadows ran
    aucs = [list(s[n]["mia"].values())[-1]["auc"] for n in names]
    accs = [100 * s[n]["final_accuracy"] for n in names]
    a2.scatter(aucs, accs)
    for n, x, y in zip(names, aucs, accs):
        a2.annotate(n, (x, y), fontsize=7)
    a2.axvline(0.5, color="gray", lw=0.8)
    a2.set_xlabel("membership-inference AUC on the last update (LiRA-style, 4 shadows)")
    a2.set_ylabel("final accuracy (%)")
    a2.grid(alpha=0.3)
    fig.suptitle(f"privacy vs utility, {doc['dataset']} device updates (delta {doc['delta']:g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=["digits", "cifar10"])
    p.add_argument("--data-root")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--max-steps", type=int, help="stop after this many device updates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--shadows", type=int, default=4, help="shadow updates for the LiRA-style attack (0: loss attack only, -1: no audit)")
    p.add_argument("--dp-set", action="append", metavar="FIELD=VALUE", help="PrivacyConfig field override (e.g. epochs=30)")
    p.add_argument("--only", nargs="*", help="run only these rows")
    p.add_argument("--frozen-lr", type=float, default=0.02, help="lr of the abd_bn_frozen row (all layers, no clipping)")
    p.add_argument("--frozen-head-lr", type=float, default=0.1, help="lr of the abd_bn_frozen_head row (no clipping)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/privacy-digits.json")
    args = p.parse_args(argv)
    doc = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    plot(doc, out.with_suffix(".png"))
    print_table(doc)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
