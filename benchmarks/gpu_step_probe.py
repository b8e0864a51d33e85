"""Where a training step's time goes on a GPU: steady-state epochs, host-device synchronisations, GPU-busy time.

    python benchmarks/gpu_step_probe.py --data .data/cifar10_jpeg.npz --out runs/gpu-probe.json

The profile (abd_edge/apps/profiling.py) times whole ``learn_new_classes``
calls, so on a GPU, where an epoch of cifar10's 10,000 images takes about a
second, its numbers mix compilation and CUDA-graph recording into the
throughput. This probe reads the engine's own per-epoch log lines instead,
and reports the median of the epochs after the first (the steady state a
250-epoch task sees) for each engine variant; for the fastest it also lists
every operation that synchronised the host with the GPU during one epoch
(``torch.cuda.set_sync_debug_mode``), and the wall time of a few profiled
steps against the time the GPU spent in kernels. Then replay training of
task 2 and dreaming, in the same variant, the same way. CPU runs work too
(no sync list there), to test the program.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from abd_edge import Learner
from abd_edge.apps.profiling import VARIANTS, cifar10_tasks, engine_config
from abd_edge.compute import compile_backend, resolve_device
from abd_edge.dreaming import train_generator

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .*\((\d+) img/s\)")


class EpochRates(logging.Handler):
    """Collects the images/s of each epoch line the engine logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rates: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = EPOCH_LINE.search(record.getMessage())
        if m:
            self.rates.append(float(m.group(3)))


def steady(rates: list[float]) -> float | None:
    return statistics.median(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None)


def learner_for(variant: str, device: str, epochs: int, later_epochs: int, dream: int, threads: int) -> Learner:
    cfg = engine_config(VARIANTS[variant], threads, dream, device)
    cfg.first_task.epochs = epochs
    cfg.later_tasks.epochs = later_epochs
    return Learner(cfg)


def sync_points(learner: Learner, data: Any) -> list[str]:
    """Every distinct place that synchronised host and GPU during one more task-1-sized call."""
    if learner.device.type != "cuda":
        return []
    probe = learner_for_same(learner, epochs=1)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.learn_new_classes(data, dream=False, show_progress=False)
    torch.cuda.set_sync_debug_mode(0)
    counts: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            key = f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:80]}"
            counts[key] = counts.get(key, 0) + 1
    return [f"{n:5d}x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def learner_for_same(learner: Learner, epochs: int) -> Learner:
    cfg = copy.deepcopy(learner.config)
    cfg.first_task.epochs = epochs
    return Learner(cfg)


def gpu_busy(learner: Learner, data: Any) -> dict[str, Any]:
    """One profiled 1-epoch call: its training wall time, and the summed time of the GPU's kernels in the whole call.

    The kernels include the call's evaluation passes after training (train
    accuracy, class statistics), so the comparison overstates how busy
    training keeps the GPU: a kernel sum well below the training time alone
    already says the host sets the pace.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if learner.device.type == "cuda" else [])
    probe = learner_for_same(learner, epochs=1)
    start = time.perf_counter()
    with profile(activities=acts) as prof:
        rep = probe.learn_new_classes(data, dream=False, show_progress=False)
    wall = time.perf_counter() - start
    rows = prof.key_averages()

    def device_us_of(e: Any) -> float:  # the attribute's name changed across torch versions
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))

    device_us = sum(device_us_of(e) for e in rows)
    top_cpu = sorted(rows, key=lambda e: -e.self_cpu_time_total)[:15]
    top_gpu = sorted(rows, key=lambda e: -device_us_of(e))[:15]
    return {
        "train_seconds": rep.train_seconds, "call_seconds": wall, "gpu_kernel_seconds": device_us / 1e6,
        "top_self_cpu_ms": {e.key: round(e.self_cpu_time_total / 1000, 1) for e in top_cpu},
        "top_self_cpu_count": {e.key: e.count for e in top_cpu},
        "top_self_device_ms": {e.key[:120]: round(device_us_of(e) / 1000, 1) for e in top_gpu if device_us_of(e) > 0},
    }


def bare_steps(device: torch.device, steps: int = 60, warmup: int = 15) -> dict[str, float]:
    """ms per ResNet-32 step at batch 128 with nothing around it: eager, and captured whole in one CUDA graph.

    The ceiling of what the engine can reach on this GPU: ``graph_*`` replays
    augmentation (the engine's batched crop, flip and colour jitter, on the
    default generator, which CUDA graphs can replay), normalisation,
    forward, loss, backward and the SGD step as one graph, so the host
    launches one thing per step instead of several hundred.
    """
    import torch.nn.functional as F

    from abd_edge.config import AugmentConfig
    from abd_edge.data.augment import BatchAugment, to_unit_float
    from abd_edge.models import build_backbone

    augment = BatchAugment(AugmentConfig(crop_padding=4, flip=True, brightness=0.25, contrast=0.8))
    out: dict[str, float] = {}
    for name in ("eager_fp32", "eager_bf16", "graph_fp32", "graph_bf16"):
        if name.startswith("graph") and device.type != "cuda":
            continue
        bf16 = name.endswith("bf16")
        torch.manual_seed(0)
        model = build_backbone("resnet32", 10, 3).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        batch = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 10, (128,), device=device)

        def step() -> None:
            x = augment(to_unit_float(batch)).sub(0.5).div(0.25).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                loss = F.cross_entropy(model(x).float(), labels)
            loss.backward()
            opt.step()

        def eager() -> None:
            opt.zero_grad(set_to_none=True)
            step()

        run = eager
        if name.startswith("graph"):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up off the capture: lazy allocations, momentum buffers, cuDNN plans
                    eager()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # no gradients before capture: backward then allocates them from the graph's pool, and every replay
            # writes them afresh instead of adding to the last step's (PyTorch's whole-network capture recipe)
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                step()

            def run() -> None:
                graph.replay()  # the same batch each time: a timing, not training

        try:
            for _ in range(warmup):
                run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[name] = 1000 * (time.perf_counter() - t) / steps
        except Exception as exc:  # noqa: BLE001 - a probe reports what failed and goes on
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]  # type: ignore[assignment]
        print(f"bare step {name}: " + (f"{out[name]:.2f} ms, {128 / out[name] * 1000:.0f} img/s" if name in out
                                       else str(out.get(name + '_error'))), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default="bf16,bf16_compile,bf16_cudagraphs")
    p.add_argument("--epochs", type=int, default=6, help="task-1 epochs per variant (the first is warm-up)")
    p.add_argument("--later-epochs", type=int, default=4, help="task-2 epochs (replay) in the fastest variant")
    p.add_argument("--dream-iters", type=int, default=150)
    p.add_argument("--images", type=int, help="only this many images per task (a CPU test)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bare-steps", type=int, default=0,
                   help="first: time this many bare steps, eager and in one CUDA graph (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    task1, task2 = cifar10_tasks(args.data, args.images)
    handler = EpochRates()
    logging.getLogger("abd_edge.engine").addHandler(handler)
    logging.getLogger("abd_edge.engine").setLevel(logging.INFO)
    doc: dict[str, Any] = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                           "torch": torch.__version__, "images_per_task": len(task1), "task1": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage: a probe stopped by its time limit still leaves what it measured
        args.out.write_text(json.dumps(doc, indent=2))

    if args.bare_steps:
        doc["bare_step_ms"] = bare_steps(torch.device(device), steps=args.bare_steps, warmup=max(1, args.bare_steps // 4))
        save()
    learners: dict[str, Learner] = {}
    for v in args.variants.split(","):
        handler.rates = []
        learner = learner_for(v, device, args.epochs, args.later_epochs, args.dream_iters, args.threads)
        t = time.perf_counter()
        learner.learn_new_classes(task1, dream=False, show_progress=False)
        doc["task1"][v] = {"epoch_images_per_second": list(handler.rates), "steady_images_per_second": steady(handler.rates),
                           "call_seconds": time.perf_counter() - t}
        learners[v] = learner
        save()
        print(f"task 1 {v:<28} steady {steady(handler.rates) or 0:8.0f} img/s  epochs {[round(r) for r in handler.rates]}",
              flush=True)
    best = max(doc["task1"], key=lambda k: doc["task1"][k]["steady_images_per_second"] or 0)
    learner = learners[best]
    doc["best"] = best
    doc["sync_points_one_epoch"] = sync_points(learner, task1)
    print(f"sync points in one epoch of {best}:", *doc["sync_points_one_epoch"][:12], sep="\n  ", flush=True)
    save()
    doc["one_profiled_epoch"] = gpu_busy(learner, task1)
    b = doc["one_profiled_epoch"]
    print(f"one profiled epoch of {best}: train {b['train_seconds']:.2f} s, GPU kernels {b['gpu_kernel_seconds']:.2f} s", flush=True)
    print("  top self CPU ms:", b["top_self_cpu_ms"], flush=True)
    save()

    # dreaming: a warm-up call (compilation), then the steady state
    st = learner._state
    kw = dict(memory_format=learner._memory_format, autocast=learner._autocast, show_progress=False,
              compile_backend=compile_backend(learner.config, learner.device, None), compile_mode=learner.config.compile_mode)
    w = train_generator(st.generator, st.model, learner.num_classes, learner.config.dream, st.generator_opt,
                        torch.Generator(learner.device).manual_seed(0), iterations=10, **kw)
    d = train_generator(st.generator, st.model, learner.num_classes, learner.config.dream, st.generator_opt,
                        torch.Generator(learner.device).manual_seed(1), **kw)
    doc["dreaming"] = {"warmup_seconds_10_iterations": w.seconds, "iterations": d.iterations,
                       "seconds_per_iteration": d.seconds_per_iteration}
    print(f"dreaming ({best}): {d.seconds_per_iteration * 1000:.1f} ms/iteration over {d.iterations} "
          f"(warm-up 10 in {w.seconds:.1f} s)", flush=True)
    save()
    handler.rates = []
    t = time.perf_counter()
    learner.learn_new_classes(task2, dream=False, show_progress=False)
    doc["replay"] = {"epoch_images_per_second": list(handler.rates), "steady_images_per_second": steady(handler.rates),
                     "call_seconds": time.perf_counter() - t}
    print(f"replay (task 2, {best}): steady {steady(handler.rates) or 0:.0f} real img/s, epochs "
          f"{[round(r) for r in handler.rates]}", flush=True)
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
