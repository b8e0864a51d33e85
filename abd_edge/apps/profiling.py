"""Where training time goes, measured side by side with the plain PyTorch loop on the machine at hand.

    abd-edge bench --profile --dataset cifar10 --data-root /path/to/cifar10_jpeg.npz --threads 1
    python -m abd_edge.apps.profiling --data /path/to/cifar10_jpeg.npz --threads 1   # every knob

One run measures, on the same ResNet-32 at batch 128 and CIFAR-10 task 1 of
cifar10-5x2 (seed 0's class order):

* ``plain``: a plain PyTorch loop fed by ``torch.utils.data.DataLoader`` over
  PIL images with per-image torchvision transforms (RandomCrop 32 pad 4,
  flip, ToTensor, Normalize) in 2 workers, the way the reference feeds its
  model;
* ``engine``: the engine's task-1 training (``Learner.learn_new_classes`` ->
  ``engine.train_task``) in each precision / layout asked for;
* replay training (task 2 with dreamed images and the previous classifier)
  in images/s and dreaming in s/iteration;
* a breakdown of a replay step and of a dreaming iteration from
  ``torch.profiler`` over the ``abd.*`` ranges the engine marks (augment,
  forward, teacher forward, loss, backward, optimizer, replay sampling,
  BN hooks);
* the ceiling: FLOPs of one training image and the machine's dense GEMM
  throughput in fp32 and bf16 at the same thread count, so each loop's
  share of the machine, and the largest ratio to the plain loop that the
  same work per image allows, are printed with the ratios.

The CPU may be shared, so the loops are measured in alternation over
``--rounds`` rounds of ``--seconds`` each and the median is reported; the
spread across rounds is in the JSON. The plain loop needs torchvision and
PIL (the ``train`` extra), which the runtime does not.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from abd_edge import Learner, LearnerConfig
from abd_edge.data import LabeledImages, class_order, load_cifar10_jpeg, split_tasks
from abd_edge.dreaming import train_generator
from abd_edge.learner_state import generator_optimizer
from abd_edge.environment import cpu_name, environment
from abd_edge.compute import compile_backend, resolve_autocast, resolve_device
from abd_edge.models import build_backbone

BATCH = 128
LABELS = ("abd.augment", "abd.replay_sample", "abd.forward", "abd.teacher_forward", "abd.loss", "abd.backward",
          "abd.optimizer")
DREAM_LABELS = ("abd.dream_forward", "abd.dream_generator", "abd.dream_classifier", "abd.bn_hooks", "abd.dream_losses", "abd.dream_backward",
                "abd.dream_optimizer")


# ----------------------------------------------------------------- data
def cifar10_tasks(path: Path, n_images: int | None) -> tuple[LabeledImages, LabeledImages]:
    """Tasks 1 and 2 of cifar10-5x2 with seed 0's class order (optionally the first ``n_images`` of each)."""
    train = load_cifar10_jpeg(path, train=True)
    labels = train.unique_labels()
    order = [labels[i] for i in class_order(len(labels), 0)]
    tasks = split_tasks(order, 5)
    out = []
    for classes in tasks[:2]:
        t = train.select_labels(classes)
        if n_images is not None and n_images < len(t):
            t = t.subset(torch.randperm(len(t), generator=torch.Generator().manual_seed(0))[:n_images])
        out.append(t)
    return out[0], out[1]


def synthetic_tasks(n: int) -> tuple[LabeledImages, LabeledImages]:
    """Random 32x32 RGB images in 4 classes, for a smoke test without the data file."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (2 * n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return (LabeledImages(imgs[:n], [i % 2 for i in range(n)]),
            LabeledImages(imgs[n:], [2 + i % 2 for i in range(n)]))


class PilImages(torch.utils.data.Dataset):
    """A CIFAR-style dataset: uint8 HWC array, a PIL image per item, torchvision transforms per image."""

    def __init__(self, data: LabeledImages, transform: Callable[[Any], torch.Tensor]) -> None:
        self.array = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        index = {lab: i for i, lab in enumerate(data.unique_labels())}
        self.targets = [index[lab] for lab in data.labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.array[i])), self.targets[i]


def plain_loop(data: LabeledImages, seconds: float, workers: int, device: torch.device) -> dict[str, Any]:
    """The reference's way: DataLoader + per-image PIL transforms, fp32 contiguous ResNet-32, SGD (batches copied to ``device``)."""
    from torchvision import transforms

    x = data.images.float() / 255
    mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PilImages(data, tf), batch_size=BATCH, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = build_backbone("resnet32", 10, 3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    model.train()
    seen, steps = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += xb.shape[0]
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del loader
    return {"images_per_second": seen / elapsed, "images": seen, "seconds": elapsed, "steps": steps}


# --------------------------------------------------------------- engine
def engine_config(variant: dict[str, Any], threads: int, dream_iterations: int = 0, device: str = "cpu") -> LearnerConfig:
    # Epochs enough to fill any measurement: the time budget ends it (on a GPU one epoch is well under a second).
    # new_class_accuracy_floor 0: a probe stopped after seconds is not meant to learn its classes, so the
    # learner's "did not learn its new classes" warning would only be noise in the profile's output.
    cfg = LearnerConfig.short_budget(epochs=1000, dream_iterations=dream_iterations, device=device, seed=0,
                                     max_classes=10, num_threads=threads, train_eval_max_images=256,
                                     new_class_accuracy_floor=0.0,
                                     precision=variant["precision"], channels_last=variant["channels_last"],
                                     compile=variant.get("compile", False), compile_mode=variant.get("compile_mode"),
                                     cuda_deterministic=variant.get("cuda_deterministic", True))
    for t in (cfg.first_task, cfg.later_tasks):
        t.batch_size = BATCH
    cfg.dream.batch_size = BATCH
    return cfg


def engine_task1(data: LabeledImages, variant: dict[str, Any], seconds: float, threads: int,
                 device: str = "cpu") -> dict[str, Any]:
    learner = Learner(engine_config(variant, threads, device=device))
    rep = learner.learn_new_classes(data, dream=False, time_budget_s=seconds, show_progress=False)
    return {"images_per_second": rep.train_images_per_second, "seconds": rep.train_seconds,
            "images": round(rep.train_images_per_second * rep.train_seconds)}


def task1_learner(data: LabeledImages, variant: dict[str, Any], threads: int, train_s: float,
                  dream_iterations: int, device: str = "cpu") -> tuple[Learner, float]:
    """A learner after ``train_s`` of task 1 and ``dream_iterations`` of dreaming; returns it and the dreaming s/iteration.

    The learner's own time budget would cut dreaming short too, so the
    generator is trained here, with the learner's own generator, optimizer,
    layout and precision.
    """
    learner = Learner(engine_config(variant, threads, dream_iterations, device))
    learner.learn_new_classes(data, dream=False, time_budget_s=train_s, show_progress=False)
    state = learner._state
    assert state.generator is not None and state.generator_opt is not None and state.model is not None
    backend = compile_backend(learner.config, learner.device, None)
    kwargs = dict(memory_format=learner._memory_format, autocast=learner._autocast, show_progress=False,
                  compile_backend=backend, compile_mode=learner.config.compile_mode)
    # a few iterations first: compilation (or cuDNN's first calls) is not the steady state a task's thousands see
    train_generator(state.generator, state.model, learner.num_classes, learner.config.dream, state.generator_opt,
                    torch.Generator(learner.device).manual_seed(0), iterations=3, **kwargs)
    dr = train_generator(state.generator, state.model, learner.num_classes, learner.config.dream, state.generator_opt,
                         torch.Generator(learner.device).manual_seed(1), **kwargs)
    return learner, dr.seconds_per_iteration


def replay_task2(learner: Learner, data: LabeledImages, seconds: float) -> dict[str, Any]:
    trial = copy.deepcopy(learner)
    rep = trial.learn_new_classes(data, dream=False, time_budget_s=seconds, show_progress=False)
    return {"images_per_second": rep.train_images_per_second, "seconds": rep.train_seconds}


# ------------------------------------------------------------- ceiling
def training_flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int] = (3, 32, 32), n: int = 4) -> float:
    """Floating-point operations of one training image: forward and backward, as torch's FLOP counter counts them.

    Only matrix products and convolutions count (what torch.utils.flop_counter
    registers); BatchNorm, ReLU and the optimizer are memory-bound extras.
    The model's gradients are cleared again afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train()
    x = torch.randn(n, *image_shape, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / n


def dense_gemm_flops_per_second(dtype: torch.dtype, device: torch.device, size: int = 2048,
                                seconds: float = 1.0) -> float:
    """Sustained FLOP/s of a square matrix product at the current thread count: the machine's practical ceiling.

    A training step of a small-channel ResNet cannot run faster than dense
    GEMM on the same cores; dividing by this says how much of the machine a
    loop already uses, and so how far any ratio between loops can still move.
    """
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=g).to(dtype)
    b = torch.randn(size, size, device=device, generator=g).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # first call: library set-up, not the steady state
    sync()
    done, start = 0, time.perf_counter()
    while True:
        a @ b
        done += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return 2 * size**3 * done / elapsed


def compute_ceiling(task1: dict[str, dict[str, Any]], device: torch.device, seconds: float = 1.0) -> dict[str, Any]:
    """Each loop's achieved FLOP/s against this machine's dense GEMM in its precision, and the best ratio the plain loop allows.

    ``best_vs_plain``: images/s the engine would reach at 100% of the faster
    GEMM (bf16 where the CPU runs it natively), over the plain loop's
    images/s; a target ratio above it needs less work per image, not a
    faster step.
    """
    flops = training_flops_per_image(build_backbone("resnet32", 10, 3).to(device))
    gemm = {"fp32": dense_gemm_flops_per_second(torch.float32, device, seconds=seconds),
            "bf16": dense_gemm_flops_per_second(torch.bfloat16, device, seconds=seconds)}
    loops: dict[str, Any] = {}
    for name, row in task1.items():
        precision = "fp32" if name == "plain" else VARIANTS[name]["precision"]
        achieved = row["images_per_second"] * flops
        loops[name] = {"gflop_per_second": achieved / 1e9, "of_gemm": achieved / gemm[precision], "gemm_precision": precision}
    plain_ips = task1["plain"]["images_per_second"]
    return {"training_mflop_per_image": flops / 1e6, "gemm_gflop_per_second": {k: v / 1e9 for k, v in gemm.items()},
            "loops": loops, "best_vs_plain": max(gemm.values()) / flops / plain_ips}


# ------------------------------------------------------------ profiler
def profile_ranges(fn: Callable[[], Any], labels: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Total CPU ms and count of each ``abd.*`` range while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out: dict[str, dict[str, float]] = {}
    for ev in prof.key_averages():
        if ev.key in labels:
            out[ev.key] = {"ms_total": ev.cpu_time_total / 1000, "count": ev.count}
    return out


def step_breakdown(learner: Learner, data: LabeledImages, seconds: float) -> dict[str, Any]:
    """Per-step ms of each part of a replay training step (task 2), from torch.profiler."""
    trial = copy.deepcopy(learner)
    holder: dict[str, Any] = {}

    def work() -> None:
        holder["rep"] = trial.learn_new_classes(data, dream=False, time_budget_s=seconds, show_progress=False)

    ranges = profile_ranges(work, LABELS)
    steps = ranges.get("abd.backward", {}).get("count", 0)
    rep = holder["rep"]
    step_ms = 1000 * rep.train_seconds / max(1, steps)
    parts = {k.removeprefix("abd."): v["ms_total"] / max(1, steps) for k, v in ranges.items()}
    parts["other"] = step_ms - sum(parts.values())
    return {"steps": steps, "step_ms_under_profiler": step_ms, "ms_per_step": parts}


def dream_breakdown(learner: Learner, iterations: int) -> dict[str, Any]:
    state = learner._state
    gen = copy.deepcopy(state.generator)
    assert gen is not None and state.model is not None
    opt = generator_optimizer(gen, learner.config.dream.lr)  # the learner's own (fused where torch has it)
    holder: dict[str, Any] = {}

    def work() -> None:
        holder["rep"] = train_generator(gen, state.model, learner.num_classes, learner.config.dream, opt,
                                        torch.Generator(learner.device).manual_seed(2), memory_format=learner._memory_format,
                                        autocast=learner._autocast, show_progress=False, iterations=iterations,
                                        compile_backend=compile_backend(learner.config, learner.device, None),
                                        compile_mode=learner.config.compile_mode)

    ranges = profile_ranges(work, DREAM_LABELS)
    rep = holder["rep"]
    it_ms = 1000 * rep.seconds / max(1, rep.iterations)
    parts = {k.removeprefix("abd."): v["ms_total"] / max(1, rep.iterations) for k, v in ranges.items()}
    # bn_hooks runs inside dream_classifier (forward hooks): not added to the sum
    parts["other"] = it_ms - sum(v for k, v in parts.items() if k != "bn_hooks")
    return {"iterations": rep.iterations, "iteration_ms_under_profiler": it_ms, "ms_per_iteration": parts}


# ----------------------------------------------------------------- main
VARIANTS = {
    "fp32": {"precision": "fp32", "channels_last": True},
    "fp32_contiguous": {"precision": "fp32", "channels_last": False},
    "bf16": {"precision": "bf16", "channels_last": True},
    # torch.compile (inductor) of the training forward; a warm-up call compiles first (not timed)
    "bf16_compile": {"precision": "bf16", "channels_last": True, "compile": True},
    # the same with CUDA graphs (compile mode "reduce-overhead"): launch overhead gone on a GPU
    "bf16_cudagraphs": {"precision": "bf16", "channels_last": True, "compile": True, "compile_mode": "reduce-overhead"},
    # cuDNN's fastest (non-deterministic) kernels instead of the repeatable ones (CUDA only)
    "bf16_compile_fast_cudnn": {"precision": "bf16", "channels_last": True, "compile": True, "cuda_deterministic": False},
    "bf16_cudagraphs_fast_cudnn": {"precision": "bf16", "channels_last": True, "compile": True,
                                   "compile_mode": "reduce-overhead", "cuda_deterministic": False},
}


def _median(runs: list[dict[str, Any]], key: str = "images_per_second") -> float:
    return statistics.median(r[key] for r in runs)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def bench_argv(data_root: str | None, threads: int | None, out: str | None, quick: bool,
               device: str | None = None) -> list[str]:
    """``abd-edge bench --profile``'s options as this program's: cifar10 data, or random images without it.

    ``quick`` (bench's ``--max-tasks 1``) shortens every measurement to a
    smoke test; the ratios it prints are then only indicative.
    """
    argv = ["--data", data_root] if data_root else ["--synthetic", "1024"]
    argv += ["--threads", str(threads or 1), "--device", device or "cpu"]
    argv += ["--out", out or f"runs/profile-{slug(cpu_name())}-{os.cpu_count()}c.json"]
    if quick:
        argv += ["--seconds", "3", "--rounds", "1", "--replay-seconds", "3", "--dream-iters", "2", "--variants", "fp32,bf16"]
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m abd_edge.apps.profiling", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="cifar10_jpeg.npz (CIFAR-10 task 1 of cifar10-5x2)")
    p.add_argument("--synthetic", type=int, help="no data file: this many random 32x32 images per task (smoke test)")
    p.add_argument("--images", type=int, help="use only this many images of each task")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training loops (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto; on CUDA every variant is warmed up first")
    p.add_argument("--replay-variants", default="fp32,bf16",
                   help="variants whose replay training and dreaming are measured (default fp32,bf16)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (default 2)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each task-1 measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of plain and engine measurements")
    p.add_argument("--variants", default="fp32,bf16,fp32_contiguous,bf16_compile", help=f"engine variants, of {sorted(VARIANTS)}")
    p.add_argument("--dream-iters", type=int, default=10, help="dreaming iterations timed per precision")
    p.add_argument("--replay-seconds", type=float, default=15.0, help="length of the replay-training measurement")
    p.add_argument("--out", type=Path, help="JSON (default benchmarks/results/profile-<cpu>.json)")
    args = p.parse_args(argv)
    if (args.data is None) == (args.synthetic is None):
        p.error("give exactly one of --data and --synthetic")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    replay_variants = [v for v in args.replay_variants.split(",") if v]
    for v in variants + replay_variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; expected one of {sorted(VARIANTS)}")
    task1, task2 = cifar10_tasks(args.data, args.images) if args.data else synthetic_tasks(args.synthetic)
    warmup: dict[str, float] = {}
    for name in variants:
        if VARIANTS[name].get("compile") or device.type == "cuda":
            start = time.perf_counter()
            engine_task1(task1, VARIANTS[name], min(args.seconds, 10.0), args.threads, str(device))
            warmup[name] = time.perf_counter() - start
            print(f"warm-up (compilation) of {name}: {warmup[name]:.0f} s", flush=True)

    # 1. task-1 images/s, plain loop and engine variants in alternation
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], **{v: [] for v in variants}}
    for r in range(args.rounds):
        for name in ["plain", *variants]:
            res = (plain_loop(task1, args.seconds, args.workers, device) if name == "plain"
                   else engine_task1(task1, VARIANTS[name], args.seconds, args.threads, str(device)))
            runs[name].append(res)
            print(f"round {r + 1}/{args.rounds} {name:<16} {res['images_per_second']:7.1f} img/s", flush=True)
    plain = _median(runs["plain"])
    task1_table = {name: {"images_per_second": _median(rs), "vs_plain": _median(rs) / plain,
                          "per_round": [x["images_per_second"] for x in rs]} for name, rs in runs.items()}
    ceiling = compute_ceiling(task1_table, device)

    # 2. replay training, dreaming, and the breakdowns, per precision
    replay: dict[str, Any] = {}
    for name in replay_variants:
        learner, spi = task1_learner(task1, VARIANTS[name], args.threads, min(args.seconds, 10.0), args.dream_iters,
                                     str(device))
        if device.type == "cuda" or VARIANTS[name].get("compile"):
            replay_task2(learner, task2, min(args.replay_seconds, 5.0))  # warm-up: the replay graphs compile here
        rp = replay_task2(learner, task2, args.replay_seconds)
        replay[name] = {
            "autocast": str(resolve_autocast(VARIANTS[name]["precision"], device)),
            "replay_images_per_second": rp["images_per_second"],
            "dream_seconds_per_iteration": spi,
            "replay_step": step_breakdown(learner, task2, min(args.replay_seconds, 8.0)),
            "dream_iteration": dream_breakdown(learner, max(2, args.dream_iters // 2)),
        }
        print(f"{name}: replay {rp['images_per_second']:.1f} img/s, dreaming {spi:.3f} s/it", flush=True)

    env = environment(with_torch=True)
    env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    env["cpu_flags_bf16"] = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|amx_tile)\b",
                                                  Path("/proc/cpuinfo").read_text()))) if Path("/proc/cpuinfo").exists() else []
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "profile_argv": list(argv) if argv is not None else sys.argv[1:],
        "environment": env,
        "setup": {"model": "resnet32", "batch_size": BATCH, "device": str(device),
                  "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "task": "cifar10-5x2 task 1 (seed 0 class order)"
                  if args.data else f"synthetic {args.synthetic}", "threads": args.threads,
                  "plain_loader_workers": args.workers, "seconds_per_measurement": args.seconds,
                  "rounds": args.rounds, "images_per_task": len(task1), "compile_warmup_seconds": warmup},
        "task1": task1_table,
        "ceiling": ceiling,
        "replay_and_dreaming": replay,
    }
    out = args.out or Path("benchmarks/results") / f"profile-{slug(cpu_name())}-{env['cpu_count']}c.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(format_tables(doc))
    print(f"wrote {out}")
    return 0


def _loop_label(name: str) -> str:
    return "plain DataLoader+PIL" if name == "plain" else f"engine {name}"


def format_tables(doc: dict[str, Any]) -> str:
    lines = [f"task-1 training, ResNet-32, batch {BATCH}, {doc['setup']['threads']} thread(s) "
             f"(median of {doc['setup']['rounds']} alternating rounds)",
             f"{'loop':<24}{'images/s':>10}{'vs plain':>10}   per round"]
    for name, r in doc["task1"].items():
        label = _loop_label(name)
        lines.append(f"{label:<24}{r['images_per_second']:>10.1f}{r['vs_plain']:>10.2f}   "
                     + " ".join(f"{v:.0f}" for v in r["per_round"]))
    c = doc.get("ceiling")
    if c:
        g = c["gemm_gflop_per_second"]
        lines.append("")
        lines.append(f"ceiling: {c['training_mflop_per_image']:.0f} MFLOP per training image; dense GEMM here "
                     f"{g['fp32']:.0f} GFLOP/s fp32, {g['bf16']:.0f} bf16")
        lines.append(f"{'loop':<24}{'GFLOP/s':>10}{'of GEMM':>10}")
        for name, r in c["loops"].items():
            label = _loop_label(name)
            lines.append(f"{label:<24}{r['gflop_per_second']:>10.0f}{100 * r['of_gemm']:>9.0f}%  ({r['gemm_precision']})")
        lines.append(f"at 100% of the faster GEMM the engine would be {c['best_vs_plain']:.2f}x the plain loop")
    for name, r in doc["replay_and_dreaming"].items():
        lines.append("")
        lines.append(f"{name}: replay training {r['replay_images_per_second']:.1f} real img/s "
                     f"(+ as many dreamed), dreaming {r['dream_seconds_per_iteration']:.3f} s/iteration")
        st = r["replay_step"]
        lines.append(f"  replay step {st['step_ms_under_profiler']:.0f} ms under the profiler ({st['steps']} steps): "
                     + ", ".join(f"{k} {v:.0f}" for k, v in st["ms_per_step"].items()))
        di = r["dream_iteration"]
        lines.append(f"  dream iteration {di['iteration_ms_under_profiler']:.0f} ms: "
                     + ", ".join(f"{k} {v:.0f}" for k, v in di["ms_per_iteration"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
