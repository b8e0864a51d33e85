"""Generalisation suite: the default recipe, untouched, on data it was not tuned on.

Issue 10, item 5. Every protocol runs the same budget,
``LearnerConfig.short_budget(epochs=E, dream_iterations=D)`` with nothing
else set but the method and the seed, on data derived from what is at hand:

* ``cifar10-grey``: CIFAR-10 converted to one grey channel (ITU-R 601 luma);
* ``cifar10-16px``: CIFAR-10 downscaled to 16x16 RGB (2x2 area average);
* ``digits-32rgb``: scikit-learn digits upscaled to 32x32 and copied to 3 channels;
* ``cifar10-folder``: the CIFAR-10 JPEG files written out as an ImageFolder
  tree (one folder per task, the npz's bytes unchanged) and handed to the
  Learner as paths, so they go through the library's folder loader.

Each protocol runs two class orders (``class_order(10, seed)`` for each
``--orders`` seed; the seed is the learner's seed too) of ``--tasks`` tasks
of ``--classes-per-task`` classes, on subsets of ``--train-per-class``
training and ``--test-per-class`` test images per class (the first ones in
the data set's order), with ABD, LwF.MC and fine-tune side by side. Target
(issue 10): ABD ahead of fine-tune by >= 15 points and ahead of LwF.MC at
the end of every protocol and order.

    .venv/bin/python benchmarks/generalisation.py --data /work/shared/data/cifar10_jpeg.npz \
        --threads 1 --out benchmarks/results/generalisation.json

Results are written after every run, so a partial suite leaves a usable file;
``--protocols`` and ``--methods`` run a part of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from abd_edge import Learner, LearnerConfig
from abd_edge.apps.cli import parse_sets
from abd_edge.data import LabeledImages, class_order, load_cifar10_jpeg, load_digits, load_image_folder
from abd_edge.environment import environment

PROTOCOLS = ("cifar10-16px", "digits-32rgb", "cifar10-grey", "cifar10-folder")
METHODS = ("abd", "lwf_mc", "finetune")
TARGET_LEAD_OVER_FINETUNE = 0.15


def first_per_class(data: LabeledImages, classes: list, n: int | None) -> LabeledImages:
    """The first ``n`` images of each class in ``classes`` (all of them when ``n`` is None), in data order."""
    counts: dict = {c: 0 for c in classes}
    keep = []
    for i, lab in enumerate(data.labels):
        if lab in counts and (n is None or counts[lab] < n):
            counts[lab] += 1
            keep.append(i)
    return data.subset(keep)


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> uint8 grey (N, 1, H, W), ITU-R 601 luma as PIL's "L" conversion."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size): area average down, bilinear up."""
    mode = "area" if size < images.shape[-1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(images.float(), size=(size, size), mode=mode, **kwargs)
    return out.round().clamp(0, 255).to(torch.uint8)


def _mapped(data: LabeledImages, fn: Callable[[torch.Tensor], torch.Tensor]) -> LabeledImages:
    return LabeledImages(fn(data.images), list(data.labels), dict(data.class_names))


def write_folder_tree(npz: Path, root: Path, tasks: list[list[int]], n_train: int | None, n_test: int | None) -> None:
    """The npz's JPEG bytes, unchanged, as root/train/taskT/CLASS/NNNNN.jpg and root/test/CLASS/NNNNN.jpg."""
    import numpy as np

    with np.load(npz, allow_pickle=False) as z:
        names = [str(s) for s in z["class_names"]]
        for split, per_class in (("train", n_train), ("test", n_test)):
            blob, offsets, labels = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
            for t, classes in enumerate(tasks):
                for c in classes:
                    d = root / split / (f"task{t}" if split == "train" else "") / names[c]
                    d.mkdir(parents=True, exist_ok=True)
                    idx = np.flatnonzero(labels == c)[:per_class]
                    for i in idx:
                        (d / f"{i:05d}.jpg").write_bytes(blob[offsets[i]:offsets[i + 1]].tobytes())


@dataclasses.dataclass
class Protocol:
    """One protocol and order: what each task trains on and what the seen classes are tested on."""

    name: str
    order_seed: int
    tasks: list[list]  # labels per task, as the learner sees them
    train: Callable[[int], object]  # task index -> what learn_new_classes receives
    test: Callable[[list], LabeledImages]  # seen labels -> test images
    image_shape: tuple[int, int, int]


def build(name: str, order_seed: int, args: argparse.Namespace) -> Protocol:
    n_classes = args.tasks * args.classes_per_task
    order = class_order(10, order_seed)[:n_classes]
    tasks = [order[t * args.classes_per_task:(t + 1) * args.classes_per_task] for t in range(args.tasks)]
    if name == "digits-32rgb":
        tr = first_per_class(load_digits(train=True), order, None)
        te = first_per_class(load_digits(train=False), order, None)
        fn = lambda x: resize(x, 32).expand(-1, 3, -1, -1).contiguous()  # noqa: E731
    elif name in ("cifar10-grey", "cifar10-16px", "cifar10-folder"):
        if args.data is None:
            raise SystemExit(f"--data (cifar10_jpeg.npz) is required for {name}")
        if name == "cifar10-folder":
            root = args.folder_root / f"order{order_seed}"
            if not (root / "test").is_dir():
                write_folder_tree(args.data, root, tasks, args.train_per_class, args.test_per_class)
            names = [str(load_cifar10_jpeg(args.data, train=False).class_names[c]) for c in order]
            by_name = [[names[order.index(c)] for c in task] for task in tasks]
            test_all = load_image_folder(root / "test")
            return Protocol(name, order_seed, by_name, lambda t: str(root / "train" / f"task{t}"),
                            lambda seen: test_all.select_labels(seen), test_all.image_shape)
        tr = first_per_class(load_cifar10_jpeg(args.data, train=True), order, args.train_per_class)
        te = first_per_class(load_cifar10_jpeg(args.data, train=False), order, args.test_per_class)
        fn = to_grey if name == "cifar10-grey" else (lambda x: resize(x, 16))  # noqa: E731
    else:
        raise SystemExit(f"unknown protocol {name!r}; expected one of {PROTOCOLS}")
    tr, te = _mapped(tr, fn), _mapped(te, fn)
    return Protocol(name, order_seed, tasks, lambda t: tr.select_labels(tasks[t]),
                    lambda seen: te.select_labels(seen), tr.image_shape)


def run(p: Protocol, method: str, epochs: int, dream_iterations: int, overrides: dict[str, str] | None = None) -> dict:
    """One method over one protocol's tasks with the default recipe at the suite's budget.

    ``overrides`` (``--set``) are applied last, so an explicit ``seed`` wins
    over the order's seed, as in ``abd-edge bench --set``.
    """
    cfg = dataclasses.replace(LearnerConfig.short_budget(epochs=epochs, dream_iterations=dream_iterations),
                              method=method, seed=p.order_seed)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    learner = Learner(cfg)
    rows = []
    start = time.perf_counter()
    for t, classes in enumerate(p.tasks):
        rep = learner.learn_new_classes(p.train(t), dream=t < len(p.tasks) - 1, show_progress=False)
        seen = [c for task in p.tasks[: t + 1] for c in task]
        acc = learner.evaluate(p.test(seen))
        new = learner.evaluate(p.test(classes))
        old = learner.evaluate(p.test(seen[: -len(classes)])) if t else None
        div = rep.dream_diversity
        rows.append({"task": t, "classes": classes, "n_images": rep.n_images, "seen_accuracy": acc,
                     "new_classes_accuracy": new, "old_classes_accuracy": old,
                     "train_accuracy": rep.train_accuracy, "learned_new_classes": rep.learned_new_classes,
                     "train_seconds": rep.train_seconds, "dream_seconds": rep.dream_seconds,
                     "dream_min_fraction": div["min_fraction"] if div else None,
                     "data_settings": rep.data_settings})
        print(f"  [{p.name} order {p.order_seed} {method}] task {t + 1}: {100 * acc:.1f}% "
              f"(new {100 * new:.1f}%{'' if old is None else f', old {100 * old:.1f}%'}) "
              f"train {rep.train_seconds:.0f}s dream {rep.dream_seconds:.0f}s", flush=True)
    return {"final_accuracy": rows[-1]["seen_accuracy"], "seconds": time.perf_counter() - start, "tasks": rows,
            "settled_config": learner.config.to_dict()}


def verdicts(results: dict) -> dict:
    """Per protocol and order: ABD's lead over fine-tune and LwF.MC, and whether the targets hold."""
    out = {}
    for key, by_method in results.items():
        if not {"abd", "finetune", "lwf_mc"} <= set(by_method):
            continue
        abd = by_method["abd"]["final_accuracy"]
        lead_ft = abd - by_method["finetune"]["final_accuracy"]
        lead_lwf = abd - by_method["lwf_mc"]["final_accuracy"]
        out[key] = {"lead_over_finetune": lead_ft, "lead_over_lwf_mc": lead_lwf,
                    "target_met": lead_ft >= TARGET_LEAD_OVER_FINETUNE and lead_lwf > 0}
    return out


def format_table(results: dict) -> str:
    head = f"{'protocol':<16}{'order':>6}" + "".join(f"{m:>10}" for m in METHODS) + f"{'ABD-FT':>8}{'ABD-LwF':>9}{'met':>5}"
    lines = [head, "-" * len(head)]
    v = verdicts(results)
    for key, by_method in results.items():
        name, order = key.rsplit("/order", 1)
        cells = "".join(f"{100 * by_method[m]['final_accuracy']:>10.1f}" if m in by_method else f"{'-':>10}"
                        for m in METHODS)
        tail = (f"{100 * v[key]['lead_over_finetune']:>8.1f}{100 * v[key]['lead_over_lwf_mc']:>9.1f}"
                f"{'yes' if v[key]['target_met'] else 'NO':>5}") if key in v else ""
        lines.append(f"{name:<16}{order:>6}{cells}{tail}")
    for m in METHODS:
        finals = [r[m]["final_accuracy"] for r in results.values() if m in r]
        if len(finals) > 1:
            lines.append(f"{m}: mean {100 * statistics.fmean(finals):.1f}% over {len(finals)} protocol-orders")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="cifar10_jpeg.npz (the cifar10 protocols need it)")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--orders", type=int, nargs="+", default=[0, 1], help="class-order (and learner) seeds")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--classes-per-task", type=int, default=2)
    p.add_argument("--train-per-class", type=int, default=256)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dream-iters", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--folder-root", type=Path, default=Path("runs/generalisation-folder"),
                   help="where the ImageFolder tree is written (reused when present)")
    p.add_argument("--out", type=Path, default=Path("runs/generalisation.json"))
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="result files of parts of the suite run apart (same settings) to start from")
    p.add_argument("--report-only", action="store_true", help="run nothing: merge, write --out and print the table")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="sets",
                   help="change one setting of the recipe, as abd-edge bench --set (not the suite's default: for comparisons)")
    args = p.parse_args(argv)
    args.overrides = parse_sets(args.sets)
    torch.set_num_threads(args.threads)
    results: dict = {}
    for path in [*args.merge, *([args.out] if args.out.exists() else [])]:  # resume: keep runs of the same settings
        prev = json.loads(path.read_text())
        if prev.get("settings") != _settings(args):
            raise SystemExit(f"{path} was run with other settings: {prev.get('settings')}")
        for key, by_method in prev["results"].items():
            results.setdefault(key, {}).update(by_method)
    suite_start = time.perf_counter()
    for name in [] if args.report_only else args.protocols:
        for order in args.orders:
            proto = build(name, order, args)
            key = f"{name}/order{order}"
            print(f"{key}: tasks {proto.tasks}, images {proto.image_shape}", flush=True)
            for method in args.methods:
                if method in results.get(key, {}):
                    continue
                results.setdefault(key, {})[method] = run(proto, method, args.epochs, args.dream_iters, args.overrides)
                _write(args, results, time.perf_counter() - suite_start)
    doc = _write(args, results, time.perf_counter() - suite_start)
    print(format_table(results))
    print(f"targets met in {sum(v['target_met'] for v in doc['verdicts'].values())} of {len(doc['verdicts'])}; "
          f"wrote {args.out}")
    return 0


def _settings(args: argparse.Namespace) -> dict:
    return {"recipe": f"LearnerConfig.short_budget(epochs={args.epochs}, dream_iterations={args.dream_iters})",
            "tasks": args.tasks, "classes_per_task": args.classes_per_task,
            "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
            "threads": args.threads, **({"overrides": args.overrides} if args.overrides else {})}


def _write(args: argparse.Namespace, results: dict, seconds: float) -> dict:
    doc = {"benchmark": "generalisation", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "settings": _settings(args), "environment": environment(with_torch=True),
           "seconds_this_invocation": seconds, "verdicts": verdicts(results), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    return doc


if __name__ == "__main__":
    raise SystemExit(main())
