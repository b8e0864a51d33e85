"""Mean and spread over seeds of device simulations (``abd-edge simulate --seed S``).

    for s in 0 1 2; do abd-edge simulate --seed $s --out runs/sim-seed$s; done
    python benchmarks/simulation_seeds.py runs/sim-seed*/simulation.json \\
        --out benchmarks/results/simulation-digits-seeds.json

The seed picks the class order and the learners' seeds. Besides mean and
standard deviation per step, the table says by how many points ABD leads
fine-tuning at the end of each seed: a user can rely on the worst seed, not
on the average.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="simulation.json files, one per seed")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    docs = [json.loads(path.read_text()) for path in args.results]
    seeds = [d["simulation"]["seed"] for d in docs]
    if len(set(seeds)) != len(seeds):
        p.error(f"each file must come from another seed, got seeds {seeds}")
    summary = summarize(docs)
    summary["inputs"] = [str(path) for path in args.results]
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"seeds {summary['seeds']}: accuracy % on the classes seen, mean +- std")
    print(f"{'step':>4} {'classes':>7} " + " ".join(f"{d:>14}" for d in DEVICES))
    for row in summary["steps"]:
        cells = " ".join(f"{row[d]['mean']:>7.1f} +- {row[d]['std']:>4.1f}" for d in DEVICES)
        print(f"{row['step']:>4} {row['classes_seen']:>7} {cells}")
    print("final lead of ABD over fine-tune, points per seed:",
          {k: round(v, 1) for k, v in summary["final_lead_over_finetune_points"].items()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
