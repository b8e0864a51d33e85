"""The ``abd-edge`` command line: bench, bench-report, learn, export, simulate, info, keygen, audit.

Every subcommand that trains or exports imports torch only when it runs,
so ``abd-edge info`` and ``abd-edge --version`` work on a runtime-only
install, and the others say which extra to install there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from abd_edge import __version__
from abd_edge.errors import AbdEdgeError, ConfigError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- argument types


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value

    parse.__name__ = f"int>={lo}"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples verbatim in the epilog; '(default: X)' after options that have a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and action.option_strings and default not in (None, False, argparse.SUPPRESS)
                and not isinstance(default, list)):
            text += " (default: %(default)s)"
        return text


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` items as the dict ``LearnerConfig.with_overrides`` takes (values checked there)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. later_tasks.lr=0.05), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# ----------------------------------------------------------------------------- commands


def _bench(args: argparse.Namespace) -> int:
    from abd_edge.extras import import_or_explain, require

    if args.profile:  # images/s of the engine beside the plain DataLoader+PIL loop, and where a step's time goes
        if args.dataset != "cifar10":
            raise ConfigError(f"--profile measures cifar10 task 1, got --dataset {args.dataset}; pass --dataset cifar10")
        require("torchvision", "PIL", feature="abd-edge bench --profile")
        profiling = import_or_explain("abd_edge.apps.profiling", feature="abd-edge bench --profile")
        return profiling.main(profiling.bench_argv(args.data_root, args.threads, args.out, args.max_tasks == 1, args.device))
    needs = (["sklearn"] if args.dataset == "digits" else []) + ([] if args.no_plot else ["matplotlib"])
    require(*needs, feature="abd-edge bench")  # before minutes of training, not after
    bench = import_or_explain("abd_edge.apps.bench", feature="abd-edge bench")
    BenchSpec, plot_curves, run_benchmark = bench.BenchSpec, bench.plot_curves, bench.run_benchmark

    spec = BenchSpec(
        dataset=args.dataset, data_root=args.data_root, tasks=args.tasks, method=args.method, seed=args.seed,
        recipe=args.recipe, epochs=args.epochs, dream_iters=args.dream_iterations, batch_size=args.batch_size,
        device=args.device, generator=args.generator, replay_pool=args.replay_pool, threads=args.threads,
        save_learner=args.save_learner, overrides=parse_sets(args.set), max_tasks=args.max_tasks,
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
    paths = [Path(p) for p in args.results]
    for p in paths:  # check every input before anything is written
        if not p.is_file():
            raise ConfigError(f"result file {p} does not exist; expected a JSON written by abd-edge bench --out")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p} is not valid JSON ({e}); expected a file written by abd-edge bench --out") from None
        if not isinstance(doc, dict) or not {"methods", "tasks", "class_order", "benchmark"} <= set(doc):
            raise ConfigError(f"{p} is not a benchmark result (no methods/tasks/class_order/benchmark); expected abd-edge bench output")
    from abd_edge.extras import import_or_explain, require

    require("matplotlib", feature="abd-edge bench-report (its PNG)")
    bench = import_or_explain("abd_edge.apps.bench", feature="abd-edge bench-report")
    merge_results, plot_curves = bench.merge_results, bench.plot_curves
    out = Path(args.out)
    doc = merge_results(paths, out)
    n_classes = sum(len(t) for t in doc["tasks"])
    plot_curves(doc["methods"], out.with_suffix(".png"), n_classes // len(doc["tasks"]))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


def _learn(args: argparse.Namespace) -> int:
    import dataclasses

    from abd_edge.extras import import_or_explain

    config_mod = import_or_explain("abd_edge.config", feature="abd-edge learn")
    Learner = import_or_explain("abd_edge.learner", feature="abd-edge learn").Learner

    learner_dir = Path(args.learner)
    if (learner_dir / "manifest.json").exists():
        fixed = [flag for flag, value in (("--recipe", args.recipe), ("--seed", args.seed)) if value is not None]
        if fixed:
            raise ConfigError(
                f"{' and '.join(fixed)} only apply when a learner is created, but {learner_dir} already holds one "
                "(its recipe and seed are fixed); drop them, or use --epochs/--dream-iterations/--method to change the next task"
            )
        learner = Learner.load(learner_dir, device=args.device)
        cfg = learner.config
        changes: dict[str, Any] = {}
        if args.method is not None:
            changes["method"] = args.method
        if args.epochs is not None:
            changes["first_task"] = dataclasses.replace(cfg.first_task, epochs=args.epochs)
            changes["later_tasks"] = dataclasses.replace(cfg.later_tasks, epochs=args.epochs)
        if args.dream_iterations is not None:
            changes["dream"] = dataclasses.replace(cfg.dream, iterations=args.dream_iterations)
        if changes:
            learner.reconfigure(**changes)  # validates; a bad value leaves the saved learner untouched
            log.info("continuing %s with %s", learner_dir, sorted(changes))
    else:
        cfg = config_mod.LearnerConfig.preset(
            args.recipe or "short", method=args.method or "abd", seed=args.seed or 0, device=args.device
        )
        if args.epochs is not None:
            cfg.first_task.epochs = cfg.later_tasks.epochs = args.epochs
        if args.dream_iterations is not None:
            cfg.dream.iterations = args.dream_iterations
        cfg.validate()
        learner = Learner(cfg)
    report = learner.learn_new_classes(args.data, show_progress=not args.quiet, privacy=_privacy_from_args(args))
    learner.save(learner_dir)
    doc: dict[str, Any] = {k: v for k, v in report.to_dict().items() if k != "epoch_losses"}
    doc["learner"] = str(learner_dir)
    doc["config"] = {"method": learner.config.method, "epochs": learner.config.later_tasks.epochs,
                     "dream_iterations": learner.config.dream.iterations}
    if args.eval:
        doc["eval"] = {"data": args.eval, "accuracy": learner.evaluate(args.eval)}
    _print_json(doc)
    return 0


def _export(args: argparse.Namespace) -> int:
    from abd_edge.extras import import_or_explain

    export_bundle = import_or_explain("abd_edge.export", feature="abd-edge export").export_bundle
    Learner = import_or_explain("abd_edge.learner", feature="abd-edge export").Learner
    if args.sign_key:
        from abd_edge.signing import load_private_key

        load_private_key(args.sign_key)  # a bad key fails before minutes of export
    learner = Learner.load(args.learner, device="cpu")
    info = export_bundle(learner, args.bundle, quantize=args.quantize, keep_versions=args.keep_versions,
                         sign_key=args.sign_key, serve_only=args.serve_only,
                         generator_onnx=args.generator_onnx)
    summary = {k: info[k] for k in ("version", "parent_version", "path", "bytes", "files", "parity", "quantization", "seconds")}
    summary["signed"] = bool(args.sign_key)
    summary["min_onnxruntime"] = info["manifest"].get("min_onnxruntime")
    _print_json(summary)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from abd_edge.extras import import_or_explain

    sim = import_or_explain("abd_edge.apps.simulate", feature="abd-edge simulate")
    budget = sim.default_budget(args.dataset)
    for field in ("epochs", "dream_iterations", "batch_size", "threads", "time_budget_s"):
        value = getattr(args, field)
        if value is not None:
            setattr(budget, field, value)
    budget.privacy = _privacy_from_args(args)
    sim.run_simulation(
        args.dataset, args.data_root, tasks=args.tasks, seed=args.seed, out_dir=args.out,
        compare_engine=args.compare_engine, budget=budget, server_epochs=args.server_epochs,
        server_dream_iters=args.server_dream_iterations, show_progress=not args.quiet, max_steps=args.steps,
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from abd_edge.environment import environment

    info: dict[str, Any] = {"environment": environment()}
    if args.path:
        from abd_edge.describe import describe

        info.update(describe(args.path))
    _print_json(info)
    return 0


def _add_privacy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differential privacy (docs/PRIVACY.md)")
    g.add_argument("--epsilon", type=float, help="make the update(s) differentially private at this epsilon (inf: the same schedule without "
                   "noise); PrivacyConfig's defaults: one class-mean release sets the head, nothing trained, BN frozen")
    g.add_argument("--delta", type=float, default=1e-5, help="with --epsilon: delta (default 1e-5; must be below 1/N)")
    g.add_argument("--max-grad-norm", type=float, help="with --epsilon: per-sample clipping norm (default: PrivacyConfig's)")
    g.add_argument("--accountant", choices=["prv", "rdp"], default="prv")


def _privacy_from_args(args: argparse.Namespace):  # -> PrivacyConfig | None
    if getattr(args, "epsilon", None) is None:
        return None
    from abd_edge.privacy.config import PrivacyConfig

    extra: dict[str, object] = {"max_grad_norm": args.max_grad_norm} if args.max_grad_norm is not None else {}
    if args.epsilon == float("inf"):
        extra["lr"] = None  # no clipping there: keep the learner's own (non-private) learning rate
    pc = PrivacyConfig(target_epsilon=args.epsilon, delta=args.delta, accountant=args.accountant, **extra)
    pc.validate()
    return pc


def _audit(args: argparse.Namespace) -> int:
    from abd_edge.extras import import_or_explain

    audit = import_or_explain("abd_edge.apps.audit", feature="abd-edge audit")
    doc = audit.audit_path(args.target, args.members, args.non_members, base=args.base, shadows=args.shadows,
                     n_dreams=args.dreams, out_dir=args.out, seed=args.seed)
    print(json.dumps({k: v for k, v in doc.items() if k != "update"}, indent=2, default=str))
    print(f"\nwrote {Path(args.out) / 'audit.json'}")
    return 0


def _add_audit_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    a = command("audit", "privacy audit of the latest update: membership inference, dream memorisation, persistence scan", _audit)
    a.add_argument("target", help="a learner directory or a bundle directory")
    a.add_argument("--members", required=True, help="the update's local images (ImageFolder tree, CIFAR dir or .npz)")
    a.add_argument("--non-members", required=True, help="held-out images of the same classes")
    a.add_argument("--base", help="the learner before the update (default for a bundle: its parent version, if kept)")
    a.add_argument("--shadows", type=int, default=4, help="shadow updates for the calibrated (LiRA-style) attack")
    a.add_argument("--dreams", type=int, default=256)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="runs/audit", help="directory for audit.json and closest_dreams.png")


def _keygen(args: argparse.Namespace) -> int:
    from abd_edge.signing import generate_key

    _print_json(generate_key(args.key, overwrite=args.force))
    return 0


# ----------------------------------------------------------------------------- parser

_EXAMPLES = {
    "main": """examples:
  abd-edge simulate                                   # the device simulation on the embedded digits
  abd-edge bench --dataset digits --tasks 5           # class-incremental benchmark, JSON + PNG
  abd-edge learn data/task1 --learner runs/learner    # learn the classes of an ImageFolder tree
  abd-edge export runs/learner runs/bundle --quantize int8 --sign-key keys/server
  abd-edge info runs/bundle                           # versions, classes, sizes, signature (no torch needed)""",
    "bench": """examples:
  abd-edge bench --dataset digits --tasks 5 --method abd
  abd-edge bench --dataset cifar10 --data-root cifar10_jpeg.npz --tasks 5 --device cuda --method all
  abd-edge bench --dataset digits --set later_tasks.lr=0.05 --set head_balance=none --out runs/r.json
  abd-edge bench --profile --dataset cifar10 --data-root cifar10_jpeg.npz --threads 1""",
    "bench-report": """example:
  abd-edge bench-report runs/abd.json runs/lwf.json --out runs/all.json""",
    "learn": """examples:
  abd-edge learn data/task1 --learner runs/learner --recipe short --epochs 5
  abd-edge learn data/task2 --learner runs/learner --dream-iterations 200 --eval data/test""",
    "export": """examples:
  abd-edge export runs/learner runs/bundle
  abd-edge export runs/learner runs/serving --serve-only --quantize int8
  abd-edge export runs/learner runs/bundle --generator-onnx           # also generator.onnx: dreams without torch (+32 MB, cifar10)
  abd-edge keygen keys/server && abd-edge export runs/learner runs/bundle --quantize int8 --sign-key keys/server""",
    "simulate": """examples:
  abd-edge simulate
  abd-edge simulate --dataset cifar10 --data-root cifar10_jpeg.npz --steps 1 --threads 2""",
    "info": """examples:
  abd-edge info                           # environment only
  abd-edge info runs/bundle               # a bundle root: every version, the current one in detail
  abd-edge info runs/bundle/versions/v000002
  abd-edge info runs/learner""",
    "keygen": """example:
  abd-edge keygen keys/server             # writes keys/server (private, 0600) and keys/server.pub""",
}


def _dream_iterations(p: argparse.ArgumentParser, help: str, *, server: bool = False) -> None:
    """``--dream-iterations`` everywhere; the older ``--dream-iters`` spelling still parses (hidden)."""
    prefix = "--server-" if server else "--"
    dest = "server_dream_iterations" if server else "dream_iterations"
    p.add_argument(f"{prefix}dream-iterations", dest=dest, type=non_negative_int, help=help)
    p.add_argument(f"{prefix}dream-iters", dest=dest, type=non_negative_int, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand without -v must not reset a -v given before it.
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level")

    p = argparse.ArgumentParser(prog="abd-edge", formatter_class=_Formatter, epilog=_EXAMPLES["main"],
                                description="Data-free class-incremental learning (Always Be Dreaming) for devices")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (also accepted after the subcommand)")
    p.add_argument("--version", action="version", version=f"abd-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_Formatter,
                            epilog=_EXAMPLES.get(name))
        sp.set_defaults(func=func)
        return sp

    b = command("bench", "class-incremental benchmark: accuracy table, JSON and PNG", _bench)
    b.add_argument("--dataset", choices=["digits", "cifar10", "cifar100", "folder"], default="digits", help="benchmark data")
    b.add_argument("--data-root", help="cifar10: the .npz or a cifar-10-batches-py dir; cifar100: cifar-100-python; folder: DIR with train/ and test/")
    b.add_argument("--tasks", type=positive_int, default=5, help="number of equal tasks the classes are split into")
    b.add_argument("--method", default="abd", help="abd, deepinversion, lwf, lwf_mc, finetune, upper_bound or all")
    b.add_argument("--seed", type=int, default=0, help="seed of the class order and the learner")
    b.add_argument("--recipe", choices=["paper", "short"], help="training recipe (default: short; paper for cifar100)")
    b.add_argument("--epochs", type=positive_int, help="epochs per task (default: the dataset's protocol: digits 12, cifar10 5)")
    _dream_iterations(b, "generator training iterations per task (default: digits 60, cifar10 500)")
    b.add_argument("--batch-size", type=_int_at_least(2), help="batch size of training and dreaming (default: the recipe's)")
    b.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    b.add_argument("--generator", choices=["abd", "abd_compact"], help="generator architecture (default: abd, the paper's)")
    b.add_argument("--replay-pool", type=non_negative_int, help="dream this many batches per task and reuse them (0: fresh every step)")
    b.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice, all cores)")
    b.add_argument("--save-learner", help="save the final learner here (with --method all: one subdirectory per method)")
    b.add_argument("--out", help="results JSON (default: runs/bench-DATASET-Nx-METHOD-seedS.json); the PNG goes beside it")
    b.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a learner setting, e.g. later_tasks.lr=0.05 or head_balance=none (repeatable)")
    b.add_argument("--max-tasks", type=positive_int, help="stop after this many tasks (a quick partial run: no dreaming after the last one unless --save-learner)")
    b.add_argument("--no-plot", action="store_true", help="write no PNG")
    b.add_argument("--profile", action="store_true", help="instead: task-1 images/s against a plain DataLoader+PIL loop, replay, dreaming and a time breakdown (--max-tasks 1: quick; no --data-root: random images)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    br = command("bench-report", "merge per-method benchmark JSONs (same protocol) into one table, JSON and PNG", _bench_report)
    br.add_argument("results", nargs="+", help="result files written by abd-edge bench --out")
    br.add_argument("--out", required=True, help="merged JSON; the PNG goes beside it")

    lr = command("learn", "learn the new classes of a dataset into a saved learner directory", _learn)
    lr.add_argument("data", help="ImageFolder tree, CIFAR python dir or .npz")
    lr.add_argument("--learner", required=True, help="learner directory (created on first use, continued after)")
    lr.add_argument("--method", help="abd, deepinversion, lwf, lwf_mc or finetune (default: abd; on an existing learner: its own)")
    lr.add_argument("--recipe", choices=["paper", "short"], help="recipe of a new learner (default: short)")
    lr.add_argument("--epochs", type=positive_int, help="epochs for this task (default: the recipe's)")
    _dream_iterations(lr, "dreaming iterations after this task (default: the recipe's)")
    lr.add_argument("--seed", type=int, help="seed of a new learner (default: 0)")
    lr.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    lr.add_argument("--eval", help="a labelled dataset to evaluate on afterwards (its accuracy goes into the JSON)")
    lr.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_privacy_args(lr)

    e = command("export", "export a saved learner as a new version of an ONNX bundle", _export)
    e.add_argument("learner", help="a directory written by Learner.save / abd-edge learn")
    e.add_argument("bundle", help="bundle directory (created, or given a new version)")
    e.add_argument("--quantize", choices=["int8"], help="also write an int8 classifier calibrated on dreamed images")
    e.add_argument("--keep-versions", type=positive_int, default=3, help="versions kept for rollback")
    e.add_argument("--sign-key", help="sign the version with this ed25519 private key (from abd-edge keygen)")
    e.add_argument("--serve-only", action="store_true",
                   help="prediction only: classifier (+ int8) and manifest, no generator or learner state (cannot be updated)")
    e.add_argument("--generator-onnx", action="store_true",
                   help="also write generator.onnx (dreaming without torch); by default the generator travels once, as learner weights")

    s = command("simulate", "class-incremental device simulation (server -> bundle -> local updates)", _simulate)
    s.add_argument("--dataset", choices=["digits", "cifar10", "folder"], default="digits", help="simulation data")
    s.add_argument("--data-root", help="as for bench")
    s.add_argument("--tasks", type=positive_int, default=5, help="number of equal tasks")
    s.add_argument("--seed", type=int, default=0, help="seed of the class order and the learners")
    s.add_argument("--out", default="runs/simulation", help="output directory (bundles, JSON, PNG)")
    s.add_argument("--compare-engine", action="store_true", help="also run the same updates in the training engine")
    s.add_argument("--epochs", type=positive_int, help="device budget: epochs per update (default: the dataset's budget)")
    _dream_iterations(s, "device budget: dreaming iterations per update (default: the dataset's budget)")
    s.add_argument("--batch-size", type=_int_at_least(2), help="device budget: batch size")
    s.add_argument("--threads", type=positive_int, help="device budget: torch threads")
    s.add_argument("--time-budget-s", type=positive_float, help="device budget: seconds per update")
    s.add_argument("--steps", type=positive_int, help="stop after this many device updates (default: all tasks after the base)")
    s.add_argument("--server-epochs", type=positive_int, help="epochs of the server's base task")
    _dream_iterations(s, "dreaming iterations of the server's base task", server=True)
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    i = command("info", "environment, and what a bundle root, bundle version or learner directory holds", _info)
    i.add_argument("path", nargs="?", help="bundle root, bundle version or learner directory")

    k = command("keygen", "create an ed25519 key pair for signing bundles", _keygen)
    k.add_argument("key", help="private key file to write (the public key goes to KEY.pub)")
    k.add_argument("--force", action="store_true", help="overwrite existing key files")
    _add_privacy_args(s)
    _add_audit_parser(command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except FloatingPointError as e:  # the engine's divergence check (TrainingDivergedError is one too): exit 3
        print(f"abd-edge: error: training diverged ({e}); try a lower learning rate (--set later_tasks.lr=...) "
              "or a smaller batch", file=sys.stderr)
        return 3
    except AbdEdgeError as e:
        print(f"abd-edge: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("abd-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
