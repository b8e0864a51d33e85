"""Mean and spread over seeds of single-method bench results (``abd-edge bench --seed S --method M --out ...``).

    for m in abd finetune lwf_mc; do for s in 0 1 2; do
      abd-edge bench --dataset digits --tasks 5 --method $m --seed $s --threads 1 --no-plot \\
        --out benchmarks/results/digits-seeds/bench-digits-$m-s$s.json; done; done
    .venv/bin/python benchmarks/seed_summary.py benchmarks/results/digits-seeds/*.json \\
        --out benchmarks/results/digits-seeds.json

The seed picks the class order and the learner's seed. The table also says
whether ABD is ahead of every other method in every seed, not only on average.
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
    args = p.parse_args(argv)
    final: dict[str, dict[int, float]] = {}
    env = None
    for path in args.results:
        doc = json.loads(path.read_text())
        env = env or doc["environment"]
        for method, r in doc["methods"].items():
            final.setdefault(method, {})[doc["benchmark"]["seed"]] = r["final_accuracy"]
    seeds = sorted({s for v in final.values() for s in v})
    summary = {
        m: {"per_seed": {str(s): v[s] for s in sorted(v)}, "mean": statistics.mean(v.values()),
            "std": statistics.stdev(v.values()) if len(v) > 1 else 0.0}
        for m, v in final.items()
    }
    ahead = None
    if "abd" in final:
        ahead = all(final["abd"][s] > v[s] for m, v in final.items() if m != "abd" for s in seeds if s in v)
    args.out.write_text(json.dumps({"environment": env, "seeds": seeds, "final_accuracy": summary,
                                    "abd_ahead_in_every_seed": ahead,
                                    "sources": [str(p) for p in args.results]}, indent=2))
    print(f"{'method':<10}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>8}{'std':>6}")
    for m, v in final.items():
        print(f"{m:<10}" + "".join(f"{100 * v[s]:>9.1f}" if s in v else f"{'-':>9}" for s in seeds)
              + f"{100 * summary[m]['mean']:>8.1f}{100 * summary[m]['std']:>6.1f}")
    print(f"ABD ahead of every other method in every seed: {ahead}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
