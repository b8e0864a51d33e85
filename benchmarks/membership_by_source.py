"""Does taking the LDA head's old classes from class statistics instead of dreams change what an attacker sees?

Digits device simulation, private updates at one epsilon (the defaults
otherwise), once with the learner's class statistics and once without
(dreams serve the old classes), from the same server model. Reports final
accuracy and the loss-threshold attack's AUC on the last update's local
images (271 members against 90 unseen test images: standard error about
0.035) and on all updates' local images (about 1083 against 361), overall
and as the mean of per-class AUCs (a class mix that differs between members
and non-members cannot move the latter). Writes JSON, prints a table.

    python benchmarks/membership_by_source.py --seed 0 --out benchmarks/results/membership-by-source-digits-seed0.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from privacy import apply_budget, server_for  # noqa: E402

from abd_edge.apps.bench import environment  # noqa: E402
from abd_edge.apps.simulate import default_budget  # noqa: E402
from abd_edge.learner import Learner  # noqa: E402
from abd_edge.privacy.audit import cross_entropy, roc_auc  # noqa: E402
from abd_edge.privacy.config import PrivacyConfig  # noqa: E402


def loss_auc(learner: Learner, members: Any, non_members: Any) -> dict[str, Any]:
    ym, yn = np.asarray(learner.registry.indices_of(members.labels)), np.asarray(learner.registry.indices_of(non_members.labels))
    lm, ln = cross_entropy(learner.logits(members).numpy(), ym), cross_entropy(learner.logits(non_members).numpy(), yn)
    per_class = [roc_auc(-lm[ym == c], -ln[yn == c]) for c in np.unique(ym)]
    return {"auc": roc_auc(-lm, -ln), "per_class_mean_auc": float(np.mean(per_class)), "n_members": len(lm), "n_non_members": len(ln)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = server_for("digits", None, args.seed, 5)
    train, test, steps, server = s.train, s.test, s.steps, s.learner
    rows: dict[str, Any] = {}
    for name, keep_statistics in (("statistics", True), ("dreams", False)):
        learner = copy.deepcopy(server)
        if not keep_statistics:
            learner._state.class_statistics = None  # the private updates then take the old classes from dreams
        apply_budget(learner, default_budget("digits"), "abd")
        seen = list(steps[0])
        for classes in steps[1:]:
            learner.learn_new_classes(train.select_labels(classes), show_progress=False,
                                      privacy=PrivacyConfig(target_epsilon=args.epsilon))
            seen += classes
        updated = [c for s in steps[1:] for c in s]
        rows[name] = {"final_accuracy": learner.evaluate(test.select_labels(seen)),
                      "last_update": loss_auc(learner, train.select_labels(steps[-1]), test.select_labels(steps[-1])),
                      "all_updates": loss_auc(learner, train.select_labels(updated), test.select_labels(updated))}
    print(f"digits seed {args.seed}, epsilon {args.epsilon:g}: loss-attack AUC (per-class mean)")
    print(f"{'old classes from':>17} {'final acc %':>11} {'last update':>16} {'all updates':>16}")
    for name, r in rows.items():
        last, every = r["last_update"], r["all_updates"]
        print(f"{name:>17} {100 * r['final_accuracy']:>11.1f} {last['auc']:>8.3f} ({last['per_class_mean_auc']:.3f}) "
              f"{every['auc']:>8.3f} ({every['per_class_mean_auc']:.3f})")
    doc = {"benchmark": "membership-by-source", "seed": args.seed, "epsilon": args.epsilon, "rows": rows,
           "environment": environment(), "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
