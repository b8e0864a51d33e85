"""The class-incremental benchmark: one method (or all) over a split stream.

A benchmark is a program that writes JSON and prints a table. ``--method
all`` runs each method, and the joint upper bound, in its own subprocess so
that peak memory is measured per method rather than for the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abd_edge.config import METHODS, LearnerConfig
from abd_edge.data import LabeledImages, class_order, load_cifar10_jpeg, load_cifar_python, load_digits, load_image_folder, split_tasks
from abd_edge.errors import ConfigError, DatasetError
from abd_edge.metrics import AccuracyMatrix
from abd_edge.resources import max_rss_bytes

log = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "folder")
UPPER_BOUND = "upper_bound"
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


# BenchSpec fields that are ints with a least value (None: the dataset's default), as the CLI enforces them
_AT_LEAST = {"tasks": 1, "epochs": 1, "dream_iters": 0, "batch_size": 2, "replay_pool": 0, "threads": 1, "max_tasks": 1}


@dataclass
class BenchSpec:
    """One benchmark run; checked when built, so the API refuses what ``abd-edge bench`` refuses."""

    dataset: str = "digits"
    data_root: str | None = None
    tasks: int = 5
    method: str = "abd"
    seed: int = 0
    recipe: str | None = None  # None: the dataset's default
    epochs: int | None = None
    dream_iters: int | None = None
    batch_size: int | None = None
    device: str | None = None
    generator: str | None = None
    replay_pool: int | None = None
    threads: int | None = None
    save_learner: str | None = None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # dotted config settings (--set)
    max_tasks: int | None = None  # stop after this many tasks of the split (a quick partial run)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, lo in _AT_LEAST.items():
            v = getattr(self, name)
            if v is None and name != "tasks":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                default = "" if name == "tasks" else " or None (the dataset's default)"
                raise ConfigError(f"BenchSpec.{name}={v!r}: expected an int >= {lo}{default}")


def _find(root: str | None, what: str) -> Path:
    if root is None:
        raise ConfigError(f"--data-root is required for --dataset {what}")
    p = Path(root).expanduser()
    if not p.exists():
        raise DatasetError(f"--data-root {p} does not exist")
    return p


def load_benchmark_data(dataset: str, root: str | None) -> tuple[LabeledImages, LabeledImages]:
    """Train and test splits of a benchmark dataset (never downloads anything)."""
    if dataset == "digits":
        return load_digits(train=True), load_digits(train=False)
    if dataset == "cifar10":
        p = _find(root, dataset)
        if p.is_dir() and (p / "cifar10_jpeg.npz").is_file():
            p = p / "cifar10_jpeg.npz"
        if p.suffix == ".npz":
            return load_cifar10_jpeg(p, train=True), load_cifar10_jpeg(p, train=False)
        return load_cifar_python(p, train=True), load_cifar_python(p, train=False)
    if dataset == "cifar100":
        p = _find(root, dataset)
        return load_cifar_python(p, train=True), load_cifar_python(p, train=False)
    if dataset == "folder":
        p = _find(root, dataset)
        if not (p / "train").is_dir() or not (p / "test").is_dir():
            raise DatasetError(f"--dataset folder expects {p}/train and {p}/test ImageFolder trees")
        return load_image_folder(p / "train"), load_image_folder(p / "test")
    raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")


def learner_config(spec: BenchSpec, method: str) -> LearnerConfig:
    """The dataset's default protocol, with the command line's overrides."""
    ds = spec.dataset
    recipe = spec.recipe or ("paper" if ds == "cifar100" else "short")
    defaults: dict[str, Any] = {}
    if ds == "digits":
        defaults = dict(epochs=12, dream_iterations=60)
    elif ds in ("cifar10", "folder"):
        defaults = dict(epochs=5, dream_iterations=500)
    if recipe == "short":
        cfg = LearnerConfig.short_budget(
            epochs=spec.epochs if spec.epochs is not None else defaults.get("epochs", 5),
            dream_iterations=spec.dream_iters if spec.dream_iters is not None else defaults.get("dream_iterations", 500),
        )
    else:
        cfg = LearnerConfig.paper()
        if spec.epochs is not None:
            for t in (cfg.first_task, cfg.later_tasks):
                scale = spec.epochs / t.epochs
                t.milestones = tuple(max(1, round(m * scale)) for m in t.milestones)
                t.epochs = spec.epochs
        if spec.dream_iters is not None:
            cfg.dream.iterations = spec.dream_iters
    cfg.method = method
    cfg.seed = spec.seed
    cfg.device = spec.device
    if spec.generator:
        cfg.generator = spec.generator
    if spec.replay_pool is not None:
        cfg.replay_pool_batches = spec.replay_pool
    # Augmentation, batch sizes and gradient clipping are the Learner's own data-aware defaults
    # (auto_config.py); only the paper's CIFAR-100 protocol fixes its normalisation statistics.
    if ds == "cifar100":
        cfg.mean, cfg.std = CIFAR100_STATS
    if spec.batch_size is not None:
        for t in (cfg.first_task, cfg.later_tasks):
            t.batch_size = spec.batch_size
        cfg.dream.batch_size = spec.batch_size
    cfg.max_classes = 100 if ds == "cifar100" else max(10, cfg.max_classes if ds == "folder" else 10)
    cfg.validate()
    if spec.overrides:
        cfg = cfg.with_overrides(spec.overrides)
    return cfg


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max_rss_bytes() / 2**20


def dreams_after(t: int, n_run: int, n_split: int, saving: bool) -> bool:
    """Whether task ``t`` (0-based) of a run of ``n_run`` of the split's ``n_split`` tasks ends with dreaming.

    Dreams serve the next task only: none after the split's last task, and
    none after the last task of a partial run (``--max-tasks``) unless the
    learner is saved, since a saved learner may go on to the next task.
    """
    return t < n_split - 1 and (t < n_run - 1 or saving)


def run_method(spec: BenchSpec, method: str, show_progress: bool = True) -> dict[str, Any]:
    """Run one method (or the joint upper bound) over the task stream; return its results."""
    from abd_edge.learner import Learner

    train, test = load_benchmark_data(spec.dataset, spec.data_root)
    labels = train.unique_labels()
    order_idx = class_order(len(labels), spec.seed)
    order = [labels[i] for i in order_idx]
    tasks = split_tasks(order, spec.tasks)
    if method == UPPER_BOUND:
        cfg = learner_config(spec, "finetune")
        stream = [order]
    else:
        cfg = learner_config(spec, method)
        stream = tasks[: spec.max_tasks] if spec.max_tasks else tasks
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    learner = Learner(cfg)
    if learner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(learner.device)
    matrix = AccuracyMatrix()
    reports = []
    start = time.perf_counter()
    for t, classes in enumerate(stream):
        data = train.select_labels(classes)
        rep = learner.learn_new_classes(data, dream=dreams_after(t, len(stream), len(tasks), spec.save_learner is not None),
                                        show_progress=show_progress)
        reports.append(rep.to_dict())
        seen_tasks = tasks if method == UPPER_BOUND else tasks[: t + 1]
        seen_test = test.select_labels([c for task in seen_tasks for c in task])
        pred = learner.logits(seen_test).argmax(dim=1)
        truth = torch.tensor(learner.registry.indices_of(seen_test.labels))
        correct = pred == truth
        task_of = {lab: j for j, task in enumerate(seen_tasks) for lab in task}
        which = torch.tensor([task_of[lab] for lab in seen_test.labels])
        per_task = [float(correct[which == j].float().mean()) for j in range(len(seen_tasks))]
        seen_acc = float(correct.float().mean())
        if method == UPPER_BOUND:
            matrix.record(0, [seen_acc], seen_accuracy=seen_acc)
        else:
            matrix.record(t, per_task, seen_accuracy=seen_acc)
        log.info("%s task %d/%d: seen accuracy %.2f%% (train %.1fs, dream %.1fs)", method, t + 1, len(stream),
                 100 * seen_acc, rep.train_seconds, rep.dream_seconds)
        print(f"[{method}] task {t + 1}/{len(stream)}: {len(learner.registry)} classes, "
              f"accuracy {100 * seen_acc:.2f}%  train {rep.train_seconds:.0f}s "
              f"({rep.train_images_per_second:.0f} img/s)  dream {rep.dream_seconds:.0f}s", flush=True)
    total = time.perf_counter() - start
    if spec.save_learner:
        learner.save(Path(spec.save_learner))
    replay_ips = [r["train_images_per_second"] for r in reports[1:]]
    dream_spi = [r["dream_seconds_per_iteration"] for r in reports if r["dream_iterations"]]
    return {
        "method": method,
        "config": cfg.to_dict(),
        "accuracy": matrix.to_dict(),
        "final_accuracy": matrix.final_accuracy,
        "average_incremental_accuracy": matrix.average_incremental_accuracy,
        "forgetting": matrix.forgetting,
        "seconds_total": total,
        "seconds_train": sum(r["train_seconds"] for r in reports),
        "seconds_dream": sum(r["dream_seconds"] for r in reports),
        "task1_images_per_second": reports[0]["train_images_per_second"],
        "replay_images_per_second": sum(replay_ips) / len(replay_ips) if replay_ips else None,
        "dream_seconds_per_iteration": sum(dream_spi) / len(dream_spi) if dream_spi else None,
        "peak_memory_mb": peak_memory_mb(learner.device),
        # after each dreaming: the smallest share of dreams any seen class gets (uniform is 1/K); details in reports
        "dream_min_fraction": [r["dream_diversity"]["min_fraction"] for r in reports if r.get("dream_diversity")],
        "device": str(learner.device),
        "reports": reports,
    }


def environment() -> dict[str, Any]:
    """Versions, CPU, torch threads and GPU for a result file (see abd_edge.environment)."""
    from abd_edge.environment import environment as describe_environment

    return describe_environment(with_torch=True)


def format_comparison(results: dict[str, dict[str, Any]]) -> str:
    head = f"{'method':<14}{'final %':>9}{'avg inc %':>11}{'forget %':>10}{'train s':>9}{'dream s':>9}{'img/s t1':>10}{'img/s t2+':>11}{'s/dream it':>11}{'peak MB':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        def f(v: Any, scale: float = 1.0, fmt: str = ".1f") -> str:
            return "-" if v is None else format(v * scale, fmt)
        lines.append(
            f"{name:<14}{f(r['final_accuracy'], 100):>9}{f(r['average_incremental_accuracy'], 100):>11}"
            f"{f(r['forgetting'], 100):>10}{f(r['seconds_train'], fmt='.0f'):>9}{f(r['seconds_dream'], fmt='.0f'):>9}"
            f"{f(r['task1_images_per_second'], fmt='.0f'):>10}{f(r['replay_images_per_second'], fmt='.0f'):>11}"
            f"{f(r['dream_seconds_per_iteration'], fmt='.3f'):>11}{f(r['peak_memory_mb'], fmt='.0f'):>9}"
        )
    return "\n".join(lines)


def plot_curves(results: dict[str, dict[str, Any]], path: Path, classes_per_task: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        seen = r["accuracy"]["seen_accuracy"]
        if name == UPPER_BOUND:
            ax.axhline(100 * seen[-1], ls="--", color="grey", label="upper bound (joint)")
            continue
        xs = [classes_per_task * (i + 1) for i in range(len(seen))]
        ax.plot(xs, [100 * s for s in seen], marker="o", label=name)
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_benchmark(spec: BenchSpec, out: Path, show_progress: bool = True) -> dict[str, Any]:
    """Run the benchmark, write ``out`` (JSON) and a PNG beside it, and print the table."""
    methods = [*METHODS, UPPER_BOUND] if spec.method == "all" else [spec.method]
    for m in methods:
        if m not in (*METHODS, UPPER_BOUND):
            raise ConfigError(f"unknown method {m!r}; expected one of {[*METHODS, UPPER_BOUND, 'all']}")
    train, _ = load_benchmark_data(spec.dataset, spec.data_root)
    n_classes = len(train.unique_labels())
    if n_classes % spec.tasks:
        raise ConfigError(f"{n_classes} classes cannot be cut into {spec.tasks} equal tasks")
    del train
    if spec.max_tasks is not None and not 1 <= spec.max_tasks <= spec.tasks:
        raise ConfigError(f"--max-tasks must be between 1 and --tasks ({spec.tasks}), got {spec.max_tasks}")
    results: dict[str, dict[str, Any]] = {}
    if len(methods) == 1:
        results[methods[0]] = run_method(spec, methods[0], show_progress)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for m in methods:
                sub_out = Path(tmp) / f"{m}.json"
                save = str(Path(spec.save_learner) / m) if spec.save_learner else None
                sub_spec = dataclasses.replace(spec, method=m, save_learner=save)
                cmd = [sys.executable, "-m", "abd_edge", "bench", *spec_args(sub_spec), "--out", str(sub_out), "--no-plot"]
                log.info("running %s", " ".join(cmd))
                subprocess.run(cmd, check=True)
                results[m] = json.loads(sub_out.read_text())["methods"][m]
    order = class_order(n_classes, spec.seed)
    doc = {
        "benchmark": dataclasses.asdict(spec),
        "environment": environment(),
        "class_order": order,
        "tasks": split_tasks(order, spec.tasks),
        "methods": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(format_comparison(results))
    for name, r in results.items():
        if name != UPPER_BOUND:
            print(f"\n{name}: accuracy matrix (row: after task i; column: test set of task j)")
            print(AccuracyMatrix.from_dict(r["accuracy"]).format_table())
    return doc


def spec_args(spec: BenchSpec) -> list[str]:
    args = ["--dataset", spec.dataset, "--tasks", str(spec.tasks), "--method", spec.method, "--seed", str(spec.seed)]
    for flag, value in (("--data-root", spec.data_root), ("--recipe", spec.recipe), ("--epochs", spec.epochs),
                        ("--dream-iters", spec.dream_iters), ("--batch-size", spec.batch_size),
                        ("--device", spec.device), ("--generator", spec.generator), ("--replay-pool", spec.replay_pool),
                        ("--threads", spec.threads), ("--save-learner", spec.save_learner),
                        ("--max-tasks", spec.max_tasks)):
        if value is not None:
            args += [flag, str(value)]
    for key, value in spec.overrides.items():
        args += ["--set", f"{key}={value}"]
    return args


def merge_results(paths: list[Path], out: Path) -> dict[str, Any]:
    """Combine single-method result files of one protocol (e.g. run in parallel) into one document."""
    docs = [json.loads(p.read_text()) for p in paths]
    first = docs[0]

    def protocol(bench: dict[str, Any]) -> dict[str, Any]:  # the settings that must agree for a merge
        return {k: v for k, v in bench.items() if k not in ("method", "threads", "save_learner")}

    for p, d in zip(paths, docs):
        if d["class_order"] != first["class_order"] or d["tasks"] != first["tasks"]:
            raise ConfigError(f"{p} uses another class order or task split than {paths[0]}; cannot merge")
        if protocol(d["benchmark"]) != protocol(first["benchmark"]):
            raise ConfigError(f"{p} was run with other settings ({d['benchmark']}) than {paths[0]} ({first['benchmark']})")
    methods = {name: r for d in docs for name, r in d["methods"].items()}
    doc = {
        "benchmark": {**first["benchmark"], "method": sorted(methods)},
        "environment": first["environment"],
        "class_order": first["class_order"],
        "tasks": first["tasks"],
        "sources": [str(p) for p in paths],
        "runs": {name: {"benchmark": d["benchmark"], "environment": d["environment"]} for d in docs for name in d["methods"]},
        "methods": methods,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(format_comparison(methods))
    return doc
