"""Mean and spread over seeds of device simulations (``abd-edge simulate --seed S``).

    for s in 0 1 2; do abd-edge simulate --seed $s --out runs/sim-seed$s; done
    python benchmarks/simulation_seeds.py runs/sim-seed*/simulation.json \\
        --out benchmarks/results/simulation-digits-seeds.json

The seed picks the class order and the learners' seeds. Besides mean and
standard deviation per step, the table says by how many points ABD leads
fine-tuning at the end of each seed: a user can rely on the worst seed, not
on the average.

``--baseline`` compares with another summary of the same command (e.g. run
on another CPU, or with ``ATEN_CPU_CAPABILITY=avx2`` and oneDNN off to
emulate one): per step, the difference of ABD's means and whether it is
within the seed spread, i.e. no larger than the larger of the two standard
deviations. ``--setting`` records how the runs were made.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

DEVICES = ("abd", "static", "finetune")


def summarize(docs: list[dict]) -> dict:
    """Per-step mean/std of each device's accuracy, and ABD's lead over fine-tuning per seed at the end."""
    steps = min(len(d["rows"]) for d in docs)
    table = []
    for i in range(steps):
        row: dict = {"step": i, "classes_seen": docs[0]["rows"][i]["classes_seen"]}
        for dev in DEVICES:
            vals = [100 * d["rows"][i][f"acc_{dev}"] for d in docs]
            row[dev] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "per_seed": vals}
        table.append(row)
    lead = {str(d["simulation"]["seed"]): 100 * (d["rows"][steps - 1]["acc_abd"] - d["rows"][steps - 1]["acc_finetune"])
            for d in docs}
    return {"seeds": [d["simulation"]["seed"] for d in docs], "steps": table,
            "final_lead_over_finetune_points": lead, "min_final_lead_points": min(lead.values()),
            "environment": docs[0].get("environment")}


def compare(summary: dict, baseline: dict) -> dict:
    """ABD's mean per step against a baseline summary: within the spread when |difference| <= max of the two stds."""
    rows = []
    for mine, base in zip(summary["steps"], baseline["steps"]):
        diff = mine["abd"]["mean"] - base["abd"]["mean"]
        spread = max(mine["abd"]["std"], base["abd"]["std"])
        rows.append({"step": mine["step"], "classes_seen": mine["classes_seen"], "abd_mean_difference": diff,
                     "spread": spread, "within_spread": abs(diff) <= spread})
    return {"steps": rows, "final_within_spread": rows[-1]["within_spread"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="simulation.json files, one per seed")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--baseline", type=Path, help="a summary written by this program to compare ABD with")
    p.add_argument("--setting", help="how these runs were made (CPU, kernels, threads), kept in the JSON")
    args = p.parse_args(argv)
    docs = [json.loads(path.read_text()) for path in args.results]
    seeds = [d["simulation"]["seed"] for d in docs]
    if len(set(seeds)) != len(seeds):
        p.error(f"each file must come from another seed, got seeds {seeds}")
    summary = summarize(docs)
    summary["inputs"] = [str(path) for path in args.results]
    if args.setting:
        summary["setting"] = args.setting
    if args.baseline:
        summary["comparison"] = compare(summary, json.loads(args.baseline.read_text()))
        summary["comparison"]["baseline"] = str(args.baseline)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"seeds {summary['seeds']}: accuracy % on the classes seen, mean +- std")
    print(f"{'step':>4} {'classes':>7} " + " ".join(f"{d:>14}" for d in DEVICES))
    for row in summary["steps"]:
        cells = " ".join(f"{row[d]['mean']:>7.1f} +- {row[d]['std']:>4.1f}" for d in DEVICES)
        print(f"{row['step']:>4} {row['classes_seen']:>7} {cells}")
    print("final lead of ABD over fine-tune, points per seed:",
          {k: round(v, 1) for k, v in summary["final_lead_over_finetune_points"].items()})
    if args.baseline:
        print(f"ABD against {args.baseline}: mean difference (this - baseline) per step, and within the seed spread?")
        for row in summary["comparison"]["steps"]:
            print(f"{row['step']:>4} {row['classes_seen']:>7} {row['abd_mean_difference']:>+7.1f} "
                  f"(spread {row['spread']:.1f}) {'yes' if row['within_spread'] else 'NO'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
