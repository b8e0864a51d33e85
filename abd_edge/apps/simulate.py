"""The class-incremental device simulation: a server trains, devices update locally.

A server learns the base classes and exports a bundle. Simulated devices then
receive new classes in steps, each only as in-memory local data, learn them
through the runtime (ONNX Runtime for every prediction), and are evaluated on
the test images of every class seen so far. Side by side:

* ``abd``: the runtime's update with dreamed replay (the product);
* ``static``: a device that never updates (the base bundle forever);
* ``finetune``: a device that updates without replay or distillation;
* ``engine`` (``--compare-engine``): the same updates in the training
  engine, evaluated with torch, to show the device loses nothing.

With ``budget.privacy`` (``abd-edge simulate --epsilon E``) the ``abd``
device's updates are differentially private (and the engine's, if
compared); ``finetune`` stays the non-private reference row.

Every device update goes through the runtime and so through
``abd_edge.export.local_update.update_bundle``, quality gate included
(``QualityGate()`` defaults, as on a real device). An update the gate refuses
is not committed: the device keeps serving its previous version, and the
step's row says so (``rejected``: device -> the gate's reasons).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abd_edge.data import LabeledImages, class_order, split_tasks
from abd_edge.errors import ConfigError, UpdateRejectedError

from .bench import BenchSpec, environment, learner_config, load_benchmark_data

log = logging.getLogger(__name__)

DEVICES = ("abd", "static", "finetune")


def _uint8(data: LabeledImages) -> LabeledImages:
    """Pixels as a camera gives them: uint8 (digits arrive as floats in [0, 1])."""
    if data.images.dtype == torch.uint8:
        return data
    return LabeledImages((data.images * 255).round().clamp(0, 255).to(torch.uint8), data.labels, data.class_names)


def _nhwc(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


def _accuracy(predicted_labels: list[Any], truth: list[Any]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted_labels, truth)]))


def default_budget(dataset: str) -> "Any":
    from abd_edge.runtime import DeviceBudget

    if dataset == "digits":
        # a few hundred 8x8 images per step: more epochs at a small batch give enough SGD steps
        return DeviceBudget(epochs=12, dream_iterations=60)
    return DeviceBudget()


def run_simulation(
    dataset: str = "digits",
    data_root: str | None = None,
    *,
    tasks: int = 5,
    seed: int = 0,
    out_dir: str | Path = "runs/simulation",
    compare_engine: bool = False,
    budget: Any = None,
    server_epochs: int | None = None,
    server_dream_iters: int | None = None,
    show_progress: bool = False,
    max_steps: int | None = None,
    gate: Any = None,
) -> dict[str, Any]:
    """Run the simulation, print its table, write simulation.json and simulation.png under ``out_dir``.

    ``gate``: the QualityGate every device update must pass (default: ``QualityGate()``, a device's default).
    """
    from abd_edge import runtime
    from abd_edge.export import export_bundle
    from abd_edge.export.local_update import budget_overrides
    from abd_edge.export.quality import QualityGate
    from abd_edge.learner import Learner

    if max_steps is not None and max_steps < 0:
        raise ConfigError(f"max_steps must be >= 0, got {max_steps}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    budget = budget or default_budget(dataset)
    train, test = load_benchmark_data(dataset, data_root)
    train, test = _uint8(train), _uint8(test)
    labels = train.unique_labels()
    order = [labels[i] for i in class_order(len(labels), seed)]
    steps = split_tasks(order, tasks)
    names = {lab: train.class_names.get(lab, str(lab)) for lab in labels}

    # ---- server: base classes, full short-budget recipe, export
    spec = BenchSpec(dataset=dataset, data_root=data_root, tasks=tasks, seed=seed,
                     epochs=server_epochs, dream_iters=server_dream_iters)
    cfg = learner_config(spec, "abd")
    server = Learner(cfg)
    t0 = time.perf_counter()
    base = train.select_labels(steps[0])
    server.learn_new_classes(base, {lab: names[lab] for lab in steps[0]}, show_progress=show_progress)
    server_seconds = time.perf_counter() - t0
    first = export_bundle(server, out / "bundle-abd")
    for name in DEVICES[1:]:
        shutil.copytree(out / "bundle-abd", out / f"bundle-{name}")
    devices = {
        name: runtime.open(out / f"bundle-{name}", quality=gate,
                           budget=dataclasses.replace(budget, privacy=None if name == "finetune" else budget.privacy))
        for name in DEVICES
    }
    engine = None
    if compare_engine:
        engine = Learner.load(devices["abd"].version_dir / "learner", device="cpu")
        engine.reconfigure(**budget_overrides(engine.config, budget))

    rows: list[dict[str, Any]] = []

    def evaluate(step: int, seen: list[Any], updates: dict[str, Any]) -> dict[str, Any]:
        part = test.select_labels(seen)
        x = _nhwc(part.images)
        row: dict[str, Any] = {"step": step, "classes_seen": len(seen)}
        for name, dev in devices.items():
            row[f"acc_{name}"] = _accuracy(dev.predict(x).labels, part.labels)
        if engine is not None:
            row["acc_engine"] = _accuracy(engine.predict(part.images).labels, part.labels)
        upd = updates.get("abd")
        row["update_seconds"] = upd.seconds_total if upd else None
        row["update_train_seconds"] = upd.seconds_train if upd else None
        row["update_dream_seconds"] = upd.seconds_dream if upd else None
        row["update_export_seconds"] = upd.seconds_export if upd else None
        row["finetune_update_seconds"] = updates["finetune"].seconds_total if "finetune" in updates else None
        row["engine_update_seconds"] = updates["engine_seconds"] if "engine_seconds" in updates else None
        row["bundle_mb"] = upd.bundle_mb if upd else first["bytes"] / 2**20
        row["peak_rss_mb"] = upd.peak_rss_mb if upd else None
        row["stopped_early"] = upd.stopped_early if upd else False
        row["version"] = devices["abd"].version
        row["epsilon"] = upd.privacy.get("epsilon") if upd and upd.privacy else None
        row["rejected"] = updates.get("rejected", {})
        return row

    seen = list(steps[0])
    rows.append(evaluate(0, seen, {}))
    print(format_row(rows[-1], header=True), flush=True)
    updates_to_run = steps[1:] if max_steps is None else steps[1 : 1 + max_steps]
    for step, classes in enumerate(updates_to_run, start=1):
        local = train.select_labels(classes)
        local_data = (_nhwc(local.images), list(local.labels))  # what the device holds: in-memory arrays only
        step_names = {lab: names[lab] for lab in classes}
        updates: dict[str, Any] = {"rejected": {}}
        for name, method in (("abd", None), ("finetune", "finetune")):
            try:
                updates[name] = devices[name].learn_new_classes(local_data, step_names, method=method, show_progress=show_progress)
            except UpdateRejectedError as e:  # not committed: the device keeps serving its previous version
                updates["rejected"][name] = e.reasons
                log.warning("step %d: the %s device's update was rejected: %s", step, name, "; ".join(e.reasons))
        if engine is not None:
            t = time.perf_counter()
            engine.learn_new_classes(local_data, step_names, show_progress=show_progress, privacy=budget.privacy)
            updates["engine_seconds"] = time.perf_counter() - t
        del local_data, local
        seen += classes
        rows.append(evaluate(step, seen, updates))
        print(format_row(rows[-1]), flush=True)

    doc = {
        "simulation": {"dataset": dataset, "tasks": tasks, "seed": seed, "class_order": order, "steps": steps,
                       "budget": {**dataclasses.asdict(dataclasses.replace(budget, privacy=None)),
                                  "privacy": budget.privacy.to_dict() if budget.privacy is not None else None},
                       "compare_engine": compare_engine,
                       "quality_gate": (gate or QualityGate()).to_dict(),
                       "server_seconds": server_seconds, "server_config": cfg.to_dict()},
        "environment": environment(),
        "rows": rows,
        "history": devices["abd"].history(),
        "bundle_files_mb": {n: e.bytes / 2**20 for n, e in devices["abd"].manifest.files.items()},
    }
    (out / "simulation.json").write_text(json.dumps(doc, indent=2, default=str))
    plot_simulation(doc, devices["abd"], out / "simulation.png")
    print(f"\nwrote {out / 'simulation.json'} and {out / 'simulation.png'}")
    return doc


def format_row(row: dict[str, Any], header: bool = False) -> str:
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    def num(v: Any, fmt: str = ".1f") -> str:
        return "-" if v is None else format(v, fmt)

    line = (f"{row['step']:>4} {row['classes_seen']:>7} {pct(row['acc_abd']):>8} {pct(row['acc_static']):>8} "
            f"{pct(row['acc_finetune']):>9} {pct(row.get('acc_engine')):>8} {num(row['update_seconds']):>10} "
            f"{num(row['bundle_mb'], '.2f'):>10} {num(row['peak_rss_mb'], '.0f'):>8} "
            f"{','.join(sorted(row.get('rejected') or {})) or '-':>9}")
    if header:
        head = (f"{'step':>4} {'classes':>7} {'abd %':>8} {'static %':>8} {'finetune %':>9} {'engine %':>8} "
                f"{'update s':>10} {'bundle MB':>10} {'peak MB':>8} {'rejected':>9}")
        return head + "\n" + "-" * len(head) + "\n" + line
    return line


def plot_simulation(doc: dict[str, Any], device: Any, path: Path, per_class: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    n_classes = device.num_classes
    fig = plt.figure(figsize=(11, 4.5))
    ax = fig.add_subplot(1, 2, 1)
    xs = [r["classes_seen"] for r in rows]
    for key, label in (("acc_abd", "device, ABD update (ONNX Runtime)"), ("acc_engine", "training engine, same budget"),
                       ("acc_finetune", "device, fine-tune without replay"), ("acc_static", "device, never updated")):
        if rows[0].get(key) is not None:
            ax.plot(xs, [100 * r[key] for r in rows], marker="o", label=label, ls="--" if key == "acc_engine" else "-")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    # grid of dreamed images, one row per class the classifier assigns them to
    pixels, labels = device.dream(max(256, 40 * n_classes), seed=0)
    sub = fig.add_subplot(1, 2, 2)
    h, w, c = pixels.shape[1:]
    canvas = np.full((n_classes * (h + 1), per_class * (w + 1), c), 255, dtype=np.uint8)
    for k in range(n_classes):
        picks = np.flatnonzero(labels == k)[:per_class]
        for j, i in enumerate(picks):
            canvas[k * (h + 1): k * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = pixels[i]
    sub.imshow(canvas.squeeze(-1) if c == 1 else canvas, cmap="gray" if c == 1 else None, interpolation="nearest")
    sub.set_yticks([k * (h + 1) + h / 2 for k in range(n_classes)])
    sub.set_yticklabels(device.class_names, fontsize=7)
    sub.set_xticks([])
    sub.set_title("dreamed images by predicted class (final bundle)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
