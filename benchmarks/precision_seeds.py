"""Accuracy over seeds of two settings of one protocol (``abd-edge bench --set precision=P --seed S``, or ``--replay-pool N``).

    for s in 0 1 2; do for p in fp32 auto; do
      abd-edge bench --dataset digits --tasks 5 --method abd --seed $s --threads 1 --set precision=$p \\
        --quiet --no-plot --out runs/bf16-seeds/digits-$p-s$s.json; done; done
    .venv/bin/python benchmarks/precision_seeds.py runs/bf16-seeds/digits-*-s*.json \\
        --out benchmarks/results/precision-digits-seeds.json

A default may change only if the new precision's mean lies within the
seed spread of the old one: the table says so, per seed and on average.
Run in alternation (fp32, auto, next seed) so that a shared CPU's load hits
both alike; the seconds are reported but are not a speed measurement.
``--by replay_pool --baseline 0`` compares replay pools the same way (runs
written by ``abd-edge bench --replay-pool N``), ``--by generator --baseline
abd`` generators; a run that leaves the setting unset counts as the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--by", default="precision", help="the setting compared: an --set key, or a bench option (replay_pool, generator)")
    p.add_argument("--baseline", default="fp32", help="the value of that setting the candidate is measured against")
    args = p.parse_args(argv)
    runs: dict[str, dict[int, dict[str, float]]] = {}
    env = None
    for path in args.results:
        doc = json.loads(path.read_text())
        env = env or doc["environment"]
        bench = doc["benchmark"]
        value = bench.get(args.by) if args.by in bench else bench["overrides"].get(args.by)
        precision = str(value) if value not in (None, 0) else args.baseline  # unset: the baseline (the default)
        for r in doc["methods"].values():
            runs.setdefault(precision, {})[doc["benchmark"]["seed"]] = {
                "final_accuracy": r["final_accuracy"], "seconds_train": r["seconds_train"],
                "seconds_dream": r["seconds_dream"]}
    seeds = sorted({s for v in runs.values() for s in v})
    summary = {}
    for prec, per_seed in runs.items():
        acc = [v["final_accuracy"] for v in per_seed.values()]
        summary[prec] = {"per_seed": {str(s): per_seed[s] for s in sorted(per_seed)}, "mean": statistics.mean(acc),
                         "std": statistics.stdev(acc) if len(acc) > 1 else 0.0}
    names = sorted(runs)
    verdict = None
    base = args.baseline
    if len(names) == 2 and base in runs:
        other = next(n for n in names if n != base)
        diff = summary[other]["mean"] - summary[base]["mean"]
        verdict = {"setting": args.by, "baseline": base, "candidate": other, "mean_difference": diff,
                   "paired_differences": {str(s): runs[other][s]["final_accuracy"] - runs[base][s]["final_accuracy"]
                                          for s in seeds if s in runs[other] and s in runs[base]},
                   "within_baseline_spread": abs(diff) <= summary[base]["std"]}
    args.out.write_text(json.dumps({"environment": env, "seeds": seeds, "final_accuracy": summary,
                                    "comparison": verdict, "sources": [str(p) for p in args.results]}, indent=2))
    print(f"{args.by:<12}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>8}{'std':>6}")
    for prec in names:
        v = runs[prec]
        print(f"{prec:<12}" + "".join(f"{100 * v[s]['final_accuracy']:>9.1f}" if s in v else f"{'-':>9}" for s in seeds)
              + f"{100 * summary[prec]['mean']:>8.1f}{100 * summary[prec]['std']:>6.1f}")
    if verdict:
        print(f"{verdict['candidate']} - {base}: {100 * verdict['mean_difference']:+.1f} points; "
              f"within the {base} seed spread: {verdict['within_baseline_spread']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
