"""Privacy-utility benchmark: device updates at several epsilons against the non-private ones.

Protocol (digits by default, the device simulation's): the server learns the
first task's classes and every device starts from that model; the remaining
tasks arrive one by one as local updates with the device budget
(``abd_edge.apps.simulate.default_budget``). Rows, all from the same base model:

* ``never_updated``: the base model forever;
* ``finetune``: non-private update without replay;
* ``abd``: the non-private ABD update (BatchNorm trained, every layer);
* ``abd_bn_frozen``: ABD with BatchNorm frozen, every other layer trained by
  SGD, no class-mean release, clipping or noise (epsilon = inf,
  ``mean_init_fraction=0``): the cost of freezing BN alone;
* ``abd_bn_frozen_head``: the private update's schedule without its noise
  (epsilon = inf at the PrivacyConfig defaults: the class-mean head from the
  exact means, nothing trained), so the eps rows' further loss is the noise's;
* ``abd_eps{E}``: the private update at epsilon E (delta 1e-5; by default the
  class-mean release, with ``mean_init_fraction < 1`` DP-SGD after it).

Per row: accuracy on all seen classes after each update, the epsilon spent,
seconds and peak memory of each update, and after the last update a
membership-inference audit of that update's local images against unseen test
images of the same classes (loss threshold and LiRA-style with shadow
updates), the loss attack once more on every update's local images against
unseen images of all the updated classes (``all AUC``: four times the
sample on digits, so half the standard error of one update's 271 members
and 90 non-members, about 0.035), plus the dream-memorisation audit. Writes
JSON and a PNG, prints a table.

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
from abd_edge.privacy.config import PrivacyConfig
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


def per_class_subset(data: Any, n: int | None, seed: int) -> Any:
    """At most ``n`` images of each class, drawn at random (a smaller device or a shorter CPU run)."""
    if n is None:
        return data
    g = torch.Generator().manual_seed(seed)
    by_class: dict[Any, list[int]] = {}
    for i, lab in enumerate(data.labels):
        by_class.setdefault(lab, []).append(i)
    keep = sorted(i for idx in by_class.values() for i in torch.tensor(idx)[torch.randperm(len(idx), generator=g)[:n]].tolist())
    return data.subset(keep)


@dataclasses.dataclass
class Server:
    """The protocol up to the device updates: data, class order, tasks, and the server's learner after task 1."""

    train: Any  # uint8, at most ``per_class`` images per class
    test: Any
    order: list[Any]
    steps: list[list[Any]]
    names: dict[Any, str]
    learner: Learner
    seconds: float  # the server's first task


def server_for(dataset: str, data_root: str | None, seed: int, tasks: int, *, per_class: int | None = None,
               server_epochs: int | None = None, dream_iters: int | None = None, max_steps: int | None = None) -> Server:
    """What every privacy experiment starts from (this benchmark and the diagnosis scripts beside it)."""
    train, test = load_benchmark_data(dataset, data_root)
    train, test = _uint8(per_class_subset(train, per_class, seed)), _uint8(test)
    labels = train.unique_labels()
    order = [labels[i] for i in class_order(len(labels), seed)]
    steps = split_tasks(order, tasks)[: 1 + max_steps if max_steps else None]
    names = {lab: train.class_names.get(lab, str(lab)) for lab in labels}
    spec = BenchSpec(dataset=dataset, data_root=data_root, tasks=tasks, seed=seed, epochs=server_epochs, dream_iters=dream_iters)
    server = Learner(learner_config(spec, "abd"))
    t0 = time.perf_counter()
    server.learn_new_classes(train.select_labels(steps[0]), {lab: names[lab] for lab in steps[0]}, show_progress=False)
    return Server(train, test, order, steps, names, server, time.perf_counter() - t0)


def run(args: argparse.Namespace, on_row: Any = None) -> dict[str, Any]:
    """One seed's rows; ``on_row(partial_doc)`` after each row (so a cut-short run keeps what it measured)."""
    torch.set_num_threads(args.threads)
    s = server_for(args.dataset, args.data_root, args.seed, args.tasks, per_class=args.per_class,
                   server_epochs=args.server_epochs, dream_iters=args.dream_iters, max_steps=args.max_steps)
    train, test, order, steps, names, server, server_seconds = s.train, s.test, s.order, s.steps, s.names, s.learner, s.seconds
    budget = default_budget(args.dataset)
    if args.update_epochs is not None or args.dream_iters is not None:
        budget = dataclasses.replace(budget, epochs=args.update_epochs or budget.epochs,
                                     dream_iterations=budget.dream_iterations if args.dream_iters is None else args.dream_iters)
    dp = parse_privacy_sets(args.dp_set or [])
    settings: list[tuple[str, str | None, PrivacyConfig | None]] = [("never_updated", None, None), ("finetune", "finetune", None),
                                                                    ("abd", "abd", None),
                                                                    ("abd_bn_frozen", "abd", PrivacyConfig(**{**dp, "target_epsilon": math.inf, "trainable": "all", "lr": args.frozen_lr,
                                                                                                            "mean_init_fraction": 0.0})),
                                                                    ("abd_bn_frozen_head", "abd", PrivacyConfig(**{**dp, "target_epsilon": math.inf, "lr": args.frozen_head_lr}))]
    for eps in args.epsilons:
        settings.append((f"abd_eps{eps:g}", "abd", PrivacyConfig(target_epsilon=eps, delta=args.delta, **dp)))
    for item in args.row or []:  # extra private rows: NAME=JSON of PrivacyConfig fields over the --dp-set ones
        name, _, fields = item.partition("=")
        settings.append((name, "abd", PrivacyConfig(**{"delta": args.delta, **dp, **json.loads(fields)})))
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
            updated = [c for step in steps[1:] for c in step]
            if len(steps) > 2:  # every update's local images against unseen images of the same classes: 4x the last update's
                # sample, so a quarter of its AUC's variance (the earlier updates' rows stay in the final model)
                row["membership_all_updates"] = membership_audit(learner, train.select_labels(updated), test.select_labels(updated),
                                                                 shadows=0, seed=args.seed)
            if method == "abd" and learner.generator is not None:
                png = Path(args.out).with_name(Path(args.out).stem + f"-{name}-closest-dreams.png")
                row["dream_memorisation"] = dream_memorisation(learner, members, non_members, n_dreams=128, png=png)
        rows[name] = row
        if on_row is not None:
            on_row({"seed": args.seed, "dataset": args.dataset, "rows": dict(rows), "partial": True})
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
        m = m + [{**a, "attack": a["attack"] + "_all_updates"} for a in row.get("membership_all_updates", {}).get("attacks", [])]
        out[name] = {
            "final_accuracy": accs[-1],
            "gain_kept_final": kept[-1],
            "gain_kept_mean": sum(kept) / len(kept),
            "mia": {a["attack"]: {"auc": a["auc"], "tpr_at_1pct_fpr": a["tpr_at_1pct_fpr"]} for a in m},
            "update_seconds_mean": _mean([s.get("seconds") for s in row["steps"][1:]]),
            "train_seconds_mean": _mean([s.get("train_seconds") for s in row["steps"][1:]]),
            "peak_rss_mb_max": max((s.get("peak_rss_mb") or 0) for s in row["steps"][1:]),
            "peak_rss_increase_mb_max": max((s.get("peak_rss_increase_mb") or 0) for s in row["steps"][1:]),
        }
    return out


def _mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of each row's summary; cost relative to the non-private ABD update.

    The cost ratios (seconds per update, peak RSS increase during an update)
    compare rows measured in the same process on the same machine.
    """
    out: dict[str, Any] = {}
    names = list(dict.fromkeys(n for d in per_seed for n in d["summary"]))
    for name in names:
        rows = [d["summary"][name] for d in per_seed if name in d["summary"]]
        agg: dict[str, Any] = {"n_seeds": len(rows), "seeds": [d["seed"] for d in per_seed if name in d["summary"]]}
        for key in ("final_accuracy", "gain_kept_final", "gain_kept_mean", "update_seconds_mean", "train_seconds_mean", "peak_rss_mb_max",
                    "peak_rss_increase_mb_max"):
            vals = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
            agg[key] = _mean(vals)
            agg[key + "_std"] = _std(vals)
            agg[key + "_per_seed"] = [r.get(key) for r in rows]
        attacks = {a for r in rows for a in r["mia"]}
        agg["mia"] = {a: {m: _mean([r["mia"][a][m] for r in rows if a in r["mia"]]) for m in ("auc", "tpr_at_1pct_fpr")}
                      for a in sorted(attacks)}
        for a in agg["mia"]:
            agg["mia"][a]["auc_max"] = max(r["mia"][a]["auc"] for r in rows if a in r["mia"])
            agg["mia"][a]["n_seeds"] = sum(a in r["mia"] for r in rows)
        out[name] = agg
    for name, agg in out.items():  # ratios within each seed's process (same machine, same load), then their mean
        for key, ratio in (("update_seconds_mean", "seconds_vs_abd"), ("train_seconds_mean", "train_seconds_vs_abd"),
                           ("peak_rss_mb_max", "peak_rss_vs_abd")):
            vals = [d["summary"][name][key] / d["summary"]["abd"][key] for d in per_seed
                    if name in d["summary"] and "abd" in d["summary"] and d["summary"][name].get(key) and d["summary"]["abd"].get(key)]
            agg[ratio] = _mean(vals)
    return out


def print_table(doc: dict[str, Any]) -> None:
    """Seed means (± sample std where there are several seeds); AUCs are seed means, TPR at 1% FPR too."""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    def pm(s: dict[str, Any], key: str, fmt: str, scale: float = 1.0) -> str:
        m, sd = s.get(key), s.get(key + "_std")
        if m is None:
            return "-"
        return f(scale * m, fmt) + ("" if sd is None else "±" + f(scale * sd, fmt))

    head = (f"{'row':>18} {'final acc %':>11} {'gain kept':>10} {'mean kept':>10} {'loss AUC':>8} {'TPR@1%':>6} "
            f"{'LiRA AUC':>8} {'TPR@1%':>6} {'all AUC':>7} {'s/update':>8} {'x abd':>5} {'peak MB':>7} {'+MB':>5}")
    print(f"{doc['dataset']}, seeds {doc['seeds']}\n" + head + "\n" + "-" * len(head))
    for name, s in doc["summary"].items():
        mia = s["mia"]
        la, lira = mia.get("loss_threshold"), next((v for k, v in mia.items() if k.startswith("lira")), None)
        pooled = mia.get("loss_threshold_all_updates")
        print(f"{name:>18} {pm(s, 'final_accuracy', '.1f', 100):>11} {pm(s, 'gain_kept_final', '.2f'):>10} "
              f"{pm(s, 'gain_kept_mean', '.2f'):>10} {f(la and la['auc'], '.3f'):>8} {f(la and la['tpr_at_1pct_fpr'], '.3f'):>6} "
              f"{f(lira and lira['auc'], '.3f'):>8} {f(lira and lira['tpr_at_1pct_fpr'], '.3f'):>6} {f(pooled and pooled['auc'], '.3f'):>7} "
              f"{f(s.get('update_seconds_mean'), '.1f'):>8} {f(s.get('seconds_vs_abd'), '.2f'):>5} "
              f"{f(s.get('peak_rss_mb_max'), '.0f'):>7} {f(s.get('peak_rss_increase_mb_max'), '.0f'):>5}")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, row in doc["per_seed"][0]["rows"].items():
        xs = [s["classes_seen"] for s in row["steps"]]
        ys = [100 * s["accuracy"] for s in row["steps"]]
        a1.plot(xs, ys, marker="o", label=name, ls="--" if "eps" not in name else "-")
    a1.set_xlabel("classes seen")
    a1.set_ylabel("accuracy on seen classes (%)")
    a1.set_ylim(0, 100)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    s = doc["summary"]
    names = [n for n in s if "loss_threshold" in s[n]["mia"]]  # the attack every seed ran
    aucs = [s[n]["mia"]["loss_threshold"]["auc"] for n in names]
    accs = [100 * s[n]["final_accuracy"] for n in names]
    a2.scatter(aucs, accs)
    for n, x, y in zip(names, aucs, accs):
        a2.annotate(n, (x, y), fontsize=7)
    a2.axvline(0.5, color="gray", lw=0.8)
    a2.set_xlabel("membership AUC, last update (loss attack, seed mean)")
    a2.set_ylabel("final accuracy (%, seed mean)")
    a2.grid(alpha=0.3)
    fig.suptitle(f"privacy vs utility, {doc['dataset']} device updates (delta {doc['delta']:g}); "
                 f"left: seed {doc['seeds'][0]}, right: mean of seeds {doc['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=["digits", "cifar10"])
    p.add_argument("--data-root")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--max-steps", type=int, help="stop after this many device updates")
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="class orders / learner seeds; the table shows mean ± std")
    p.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--shadows", type=int, default=4, help="shadow updates for the LiRA-style attack (0: loss attack only, -1: no audit)")
    p.add_argument("--shadow-seeds", type=int, default=99, help="run the shadow (LiRA) attack on the first this many seeds only, "
                   "the loss attack on the others (shadows are updates: the audit's main cost)")
    p.add_argument("--dp-set", action="append", metavar="FIELD=VALUE", help="PrivacyConfig field override (e.g. epochs=30)")
    p.add_argument("--only", nargs="*", help="run only these rows")
    p.add_argument("--row", action="append", metavar="NAME=JSON",
                   help="an extra ABD row with these PrivacyConfig fields, e.g. 'abd_eps8_no_init={\"target_epsilon\": 8, "
                        "\"mean_init_fraction\": 0}'")
    p.add_argument("--frozen-lr", type=float, default=0.02, help="lr of the abd_bn_frozen row (all layers, no clipping)")
    p.add_argument("--frozen-head-lr", type=float, default=0.1, help="lr of the abd_bn_frozen_head row (no clipping)")
    p.add_argument("--per-class", type=int, help="use at most this many training images per class (server and devices)")
    p.add_argument("--server-epochs", type=int, help="epochs of the server's first task (default: the dataset's)")
    p.add_argument("--update-epochs", type=int, help="epochs of a non-private device update (default: the device budget's)")
    p.add_argument("--dream-iters", type=int, help="dreaming iterations, server and devices (default: the dataset's)")
    p.add_argument("--include", nargs="*", help="results files of the same settings whose seeds are added to the summary")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/privacy-digits.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    per_seed: list[dict[str, Any]] = []
    for path in args.include or []:  # seeds run in other processes (or an earlier run of the same settings)
        earlier = json.loads(Path(path).read_text())
        for d in earlier.get("per_seed", [earlier]):
            d["summary"] = summarize(d)  # with this version's fields
            per_seed.append(d)
    for seed in args.seeds:
        shadows = args.shadows if len(per_seed) < args.shadow_seeds or args.shadows < 0 else 0  # LiRA on the first seeds only
        partial_out = out.with_name(out.stem + f"-seed{seed}-partial.json")
        per_seed.append(run(argparse.Namespace(**{**vars(args), "seed": seed, "shadows": shadows}),
                            on_row=lambda d: partial_out.write_text(json.dumps(d, indent=2, default=str))))
        partial_out.unlink(missing_ok=True)
        done = [d["seed"] for d in per_seed]
        doc = {"benchmark": "privacy-utility", "dataset": args.dataset, "seeds": done, "delta": args.delta,
               "command": " ".join(sys.argv), "summary": aggregate(per_seed), "per_seed": per_seed}
        out.write_text(json.dumps(doc, indent=2, default=str))  # after every seed: a cut-short run keeps its seeds
        print(f"seed {seed} done", flush=True)
    if not args.seeds:
        doc = {"benchmark": "privacy-utility", "dataset": args.dataset, "seeds": [d["seed"] for d in per_seed],
               "delta": args.delta, "command": " ".join(sys.argv), "summary": aggregate(per_seed), "per_seed": per_seed}
        out.write_text(json.dumps(doc, indent=2, default=str))
    plot(doc, out.with_suffix(".png"))
    print_table(doc)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
