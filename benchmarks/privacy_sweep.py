"""Screen private-update settings on the digits device simulation: gain kept at one epsilon, no audits.

Each named setting (PrivacyConfig fields, JSON) runs the four device
updates from the same server model as ``benchmarks/privacy.py``; the
reference rows (never updated, non-private ABD) are computed once per seed
and cached beside the output. Appends one JSON line per setting, e.g.

    python benchmarks/privacy_sweep.py --seed 0 --settings '{"head_eps8": {"target_epsilon": 8, "trainable": "head"}}' \\
        --out runs/privacy-sweep.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from abd_edge.privacy.config import PrivacyConfig
from abd_edge.apps.simulate import default_budget
from privacy import _static_accuracy, apply_budget, server_for  # benchmarks/privacy.py (this script's directory is on sys.path)


def read_settings(text: str) -> dict[str, Any]:
    """``--settings``: inline JSON (it starts with "{") or a path to a JSON file.

    Inline JSON is recognised by its first character, not by trying it as a
    path first: a long JSON string is no valid file name (OSError "File name
    too long" from ``Path.is_file``).
    """
    raw = text if text.lstrip().startswith("{") else Path(text).read_text()
    settings = json.loads(raw)
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise SystemExit(f"--settings must be a JSON object of name -> PrivacyConfig fields, got {raw[:80]!r}")
    return settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", required=True, help="JSON object: name -> PrivacyConfig fields (or a path to such a file)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/privacy-sweep.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = read_settings(args.settings)
    s = server_for("digits", None, args.seed, 5)
    train, test, steps, server = s.train, s.test, s.steps, s.learner
    budget = default_budget("digits")

    def chain(method: str | None, pc: PrivacyConfig | None) -> tuple[list[float], float]:
        learner, seen, accs, t = copy.deepcopy(server), list(steps[0]), [], time.perf_counter()
        for classes in steps[1:]:
            seen += classes
            if method is None:
                accs.append(_static_accuracy(server, test, seen))
                continue
            apply_budget(learner, budget, method)
            learner.learn_new_classes(train.select_labels(classes), show_progress=False, privacy=pc)
            accs.append(learner.evaluate(test.select_labels(seen)))
        return accs, time.perf_counter() - t

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ref_path = out.with_name(f"{out.stem}-reference-seed{args.seed}.json")
    if ref_path.exists():
        ref: dict[str, Any] = json.loads(ref_path.read_text())
    else:
        ref = {"never": chain(None, None)[0], "abd": chain("abd", None)[0]}
        ref_path.write_text(json.dumps(ref))
    for name, fields in settings.items():
        accs, seconds = chain("abd", PrivacyConfig(**fields))
        kept = [(a - s) / (r - s) for a, r, s in zip(accs, ref["abd"], ref["never"])]
        rec = {"seed": args.seed, "name": name, "privacy": fields, "accuracy": accs, "reference": ref,
               "gain_kept_final": kept[-1], "gain_kept_mean": sum(kept) / len(kept), "seconds": seconds}
        print(f"{name:>20}: gain kept {kept[-1]:.3f} final, {rec['gain_kept_mean']:.3f} mean ({seconds:.0f} s)", flush=True)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
