"""The ``abd-edge`` command line: bench, learn, export, simulate, info, audit."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .errors import AbdEdgeError, ConfigError


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. later_tasks.lr=0.05), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchSpec, plot_curves, run_benchmark

    spec = BenchSpec(
        dataset=args.dataset, data_root=args.data_root, tasks=args.tasks, method=args.method, seed=args.seed,
        recipe=args.recipe, epochs=args.epochs, dream_iters=args.dream_iters, batch_size=args.batch_size,
        device=args.device, generator=args.generator, replay_pool=args.replay_pool, threads=args.threads,
        save_learner=args.save_learner, overrides=_parse_sets(args.set), max_tasks=args.max_tasks,
    )
    out = Path(args.out or f"runs/bench-{args.dataset}-{args.tasks}x-{args.method}-seed{args.seed}.json")
    doc = run_benchmark(spec, out, show_progress=not args.quiet)
    if not args.no_plot:
        n_classes = sum(len(t) for t in doc["tasks"])
        plot_curves(doc["methods"], out.with_suffix(".png"), n_classes // args.tasks)
        print(f"\nwrote {out} and {out.with_suffix('.png')}")
    else:
        print(f"\nwrote {out}")
    return 0


def _bench_report(args: argparse.Namespace) -> int:
    from .bench import merge_results, plot_curves

    doc = merge_results([Path(p) for p in args.results], Path(args.out))
    n_classes = sum(len(t) for t in doc["tasks"])
    plot_curves(doc["methods"], Path(args.out).with_suffix(".png"), n_classes // len(doc["tasks"]))
    print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _learn(args: argparse.Namespace) -> int:
    from .config import LearnerConfig
    from .learner import Learner

    learner_dir = Path(args.learner)
    if (learner_dir / "manifest.json").exists():
        learner = Learner.load(learner_dir, device=args.device)
    else:
        cfg = LearnerConfig.preset(args.recipe, method=args.method, seed=args.seed, device=args.device)
        if args.epochs is not None:
            cfg.first_task.epochs = cfg.later_tasks.epochs = args.epochs
        if args.dream_iters is not None:
            cfg.dream.iterations = args.dream_iters
        cfg.validate()
        learner = Learner(cfg)
    report = learner.learn_new_classes(args.data, show_progress=not args.quiet, privacy=_privacy_from_args(args))
    learner.save(learner_dir)
    print(json.dumps({k: v for k, v in report.to_dict().items() if k != "epoch_losses"}, indent=2))
    if args.eval:
        print(f"accuracy on {args.eval}: {100 * learner.evaluate(args.eval):.2f}%")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_bundle
    from .learner import Learner

    learner = Learner.load(args.learner, device="cpu")
    info = export_bundle(learner, args.bundle, quantize=args.quantize, keep_versions=args.keep_versions)
    summary = {k: info[k] for k in ("version", "parent_version", "path", "bytes", "files", "parity", "quantization", "seconds")}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .runtime import DeviceBudget
    from .simulate import default_budget, run_simulation

    budget = default_budget(args.dataset)
    for field in ("epochs", "dream_iterations", "batch_size", "threads", "time_budget_s"):
        value = getattr(args, field)
        if value is not None:
            setattr(budget, field, value)
    budget.privacy = _privacy_from_args(args)
    run_simulation(
        args.dataset, args.data_root, tasks=args.tasks, seed=args.seed, out_dir=args.out,
        compare_engine=args.compare_engine, budget=budget, server_epochs=args.server_epochs,
        server_dream_iters=args.server_dream_iters, show_progress=not args.quiet, max_steps=args.steps,
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from .bench import environment

    info: dict[str, object] = {"environment": environment()}
    if args.path:
        from .bundle_format import read_manifest

        manifest = read_manifest(Path(args.path))
        info["manifest"] = manifest
        if (manifest.get("privacy") or {}).get("ledger"):
            from .privacy.ledger import summarize

            info["privacy_summary"] = summarize(manifest["privacy"]["ledger"])
    print(json.dumps(info, indent=2, default=str))
    return 0


def _add_privacy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differential privacy (docs/PRIVACY.md)")
    g.add_argument("--epsilon", type=float, help="make the update(s) differentially private at this epsilon (inf: BN-frozen, no noise); "
                   "the private schedule is PrivacyConfig's (20 epochs, expected batch 64, lr 1)")
    g.add_argument("--delta", type=float, default=1e-5, help="with --epsilon: delta (default 1e-5; must be below 1/N)")
    g.add_argument("--max-grad-norm", type=float, help="with --epsilon: per-sample clipping norm (default: PrivacyConfig's)")
    g.add_argument("--accountant", choices=["prv", "rdp"], default="prv")


def _privacy_from_args(args: argparse.Namespace):  # -> PrivacyConfig | None
    if getattr(args, "epsilon", None) is None:
        return None
    from .config import PrivacyConfig

    extra: dict[str, object] = {"max_grad_norm": args.max_grad_norm} if args.max_grad_norm is not None else {}
    if args.epsilon == float("inf"):
        extra["lr"] = None  # no clipping there: keep the learner's own (non-private) learning rate
    pc = PrivacyConfig(target_epsilon=args.epsilon, delta=args.delta, accountant=args.accountant, **extra)
    pc.validate()
    return pc


def _audit(args: argparse.Namespace) -> int:
    from .privacy.audit import audit_path

    doc = audit_path(args.target, args.members, args.non_members, base=args.base, shadows=args.shadows,
                     n_dreams=args.dreams, out_dir=args.out, seed=args.seed)
    print(json.dumps({k: v for k, v in doc.items() if k != "update"}, indent=2, default=str))
    print(f"\nwrote {Path(args.out) / 'audit.json'}")
    return 0


def _add_audit_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    a = sub.add_parser("audit", help="privacy audit of the latest update: membership inference, dream memorisation, persistence scan")
    a.add_argument("target", help="a learner directory or a bundle directory")
    a.add_argument("--members", required=True, help="the update's local images (ImageFolder tree, CIFAR dir or .npz)")
    a.add_argument("--non-members", required=True, help="held-out images of the same classes")
    a.add_argument("--base", help="the learner before the update (default for a bundle: its parent version, if kept)")
    a.add_argument("--shadows", type=int, default=4, help="shadow updates for the calibrated (LiRA-style) attack")
    a.add_argument("--dreams", type=int, default=256)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="runs/audit", help="directory for audit.json and closest_dreams.png")
    a.set_defaults(func=_audit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="abd-edge", description="Data-free class-incremental learning (ABD) for devices")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="class-incremental benchmark: accuracy table, JSON and PNG")
    b.add_argument("--dataset", choices=["digits", "cifar10", "cifar100", "folder"], default="digits")
    b.add_argument("--data-root", help="cifar10: the .npz or a cifar-10-batches-py dir; cifar100: cifar-100-python; folder: DIR with train/ and test/")
    b.add_argument("--tasks", type=int, default=5)
    b.add_argument("--method", default="abd", help="abd, deepinversion, lwf, lwf_mc, finetune, upper_bound or all")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--recipe", choices=["paper", "short"], help="default: short (paper for cifar100)")
    b.add_argument("--epochs", type=int)
    b.add_argument("--dream-iters", type=int)
    b.add_argument("--batch-size", type=int)
    b.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    b.add_argument("--generator", help="abd (paper) or abd_compact")
    b.add_argument("--replay-pool", type=int, help="dream this many batches per task and reuse them (0: fresh every step)")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, all cores)")
    b.add_argument("--save-learner", help="save the final learner here (with --method all: one subdirectory per method)")
    b.add_argument("--out", help="results JSON (default runs/bench-....json); the PNG goes beside it")
    b.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a learner setting, e.g. later_tasks.lr=0.05 or head_balance=none (repeatable)")
    b.add_argument("--max-tasks", type=int, help="stop after this many tasks (a quick partial run; dreaming still runs after each)")
    b.add_argument("--no-plot", action="store_true")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_bench)

    br = sub.add_parser("bench-report", help="merge per-method benchmark JSONs (same protocol) into one table, JSON and PNG")
    br.add_argument("results", nargs="+")
    br.add_argument("--out", required=True)
    br.set_defaults(func=_bench_report)

    lr = sub.add_parser("learn", help="learn the new classes of a dataset into a saved learner directory")
    lr.add_argument("data", help="ImageFolder tree, CIFAR python dir or .npz")
    lr.add_argument("--learner", required=True, help="learner directory (created on first use)")
    lr.add_argument("--method", default="abd")
    lr.add_argument("--recipe", choices=["paper", "short"], default="short")
    lr.add_argument("--epochs", type=int)
    lr.add_argument("--dream-iters", type=int)
    lr.add_argument("--seed", type=int, default=0)
    lr.add_argument("--device")
    lr.add_argument("--eval", help="a labelled dataset to evaluate on afterwards")
    lr.add_argument("--quiet", action="store_true")
    _add_privacy_args(lr)
    lr.set_defaults(func=_learn)

    e = sub.add_parser("export", help="export a saved learner as a new version of an ONNX bundle")
    e.add_argument("learner", help="a directory written by Learner.save / abd-edge learn")
    e.add_argument("bundle", help="bundle directory (created, or given a new version)")
    e.add_argument("--quantize", choices=["int8"], help="also write an int8 classifier calibrated on dreamed images")
    e.add_argument("--keep-versions", type=int, default=3)
    e.set_defaults(func=_export)

    s = sub.add_parser("simulate", help="class-incremental device simulation (server -> bundle -> local updates)")
    s.add_argument("--dataset", choices=["digits", "cifar10", "folder"], default="digits")
    s.add_argument("--data-root")
    s.add_argument("--tasks", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/simulation", help="output directory (bundles, JSON, PNG)")
    s.add_argument("--compare-engine", action="store_true", help="also run the same updates in the training engine")
    s.add_argument("--epochs", type=int, help="device budget: epochs per update")
    s.add_argument("--dream-iterations", type=int, help="device budget: dreaming iterations per update")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--time-budget-s", type=float)
    s.add_argument("--steps", type=int, help="stop after this many device updates (default: all tasks after the base)")
    s.add_argument("--server-epochs", type=int)
    s.add_argument("--server-dream-iters", type=int)
    s.add_argument("--quiet", action="store_true")
    _add_privacy_args(s)
    s.set_defaults(func=_simulate)

    i = sub.add_parser("info", help="environment, and the manifest of a learner or bundle directory")
    i.add_argument("path", nargs="?")
    i.set_defaults(func=_info)
    _add_audit_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except AbdEdgeError as e:
        print(f"abd-edge: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
