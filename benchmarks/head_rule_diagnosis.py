"""Which statistics limit the private update's LDA head? (issue 9, cifar10 update, seed 1 kept 0.13 of the gain)

Trains the privacy benchmark's server model for one seed, then sets the
head of the 4-class model (2 old + 2 new classes of cifar10-5x2) by the LDA
rule from different sources of class means and covariance, with the class-
mean release's noise at the given epsilon (several noise draws), and reports
accuracy on all seen / old / new test classes. No training after the server:
only feature passes, so every row shares one backbone.

    python benchmarks/head_rule_diagnosis.py --seed 1 --out benchmarks/results/head-rule-diagnosis-cifar10-seed1.json

Rows: ``dreams`` (old means and covariance from dreamed features: the rule
before class statistics), ``real_means`` (the server's real old-class means,
dreamed covariance), ``real_means_cov`` (the learner's class statistics: real
old means and covariance, the default now), ``real_cov_dream_means``, and
``oracle_real_all`` (LDA on real features of all seen classes, no noise).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from privacy import server_for  # noqa: E402

from abd_edge.apps.bench import environment  # noqa: E402
from abd_edge.privacy.config import PrivacyConfig  # noqa: E402
from abd_edge.privacy.dp import plan_update  # noqa: E402
from abd_edge.privacy.mean_init import dreamed_features, lda_head, penultimate_features, public_feature_scale, release_class_means  # noqa: E402


def class_means(feats: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([feats[labels == c].mean(0) for c in range(n)])


def accuracy(head: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor, n_seen: int) -> float:
    with torch.no_grad():
        return float((head(feats)[:, :n_seen].argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root", default="/work/shared/data/cifar10_jpeg.npz")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--server-epochs", type=int, default=4)
    p.add_argument("--dream-iters", type=int, default=40)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = server_for(args.dataset, args.data_root, args.seed, args.tasks, per_class=args.per_class,
                   server_epochs=args.server_epochs, dream_iters=args.dream_iters)
    train, test, steps, server = s.train, s.test, s.steps, s.learner
    print(f"server: {s.seconds:.0f}s", flush=True)
    n_old, k = len(steps[0]), len(steps[1])
    n_seen = n_old + k
    seen = list(steps[0]) + list(steps[1])
    st = server._state
    model, norm = st.model.eval(), st.normalizer
    index = {lab: i for i, lab in enumerate(seen)}

    def feats_of(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (penultimate_features(model, data.images, norm),
                torch.tensor([index[lab] for lab in data.labels], dtype=torch.long))

    f_old, y_old = feats_of(train.select_labels(steps[0]))
    f_new, y_new = feats_of(train.select_labels(steps[1]))
    f_test, y_test = feats_of(test.select_labels(seen))
    d_feats, d_labels = dreamed_features(model, st.generator, args.seed + 3, 1024, n_old)
    clip = public_feature_scale(d_feats)
    plan = plan_update(PrivacyConfig(target_epsilon=args.epsilon), len(f_new), server.config.later_tasks, first_task=False)
    sigma = plan.release_noise_multiplier
    print(f"release noise multiplier {sigma:.3f}, clip {clip:.3g}, dream label counts {torch.bincount(d_labels, minlength=n_old).tolist()}")
    real_old_means = class_means(f_old, y_old, n_old)
    dream_means = class_means(d_feats, d_labels, n_old)
    print("old means: real vs dreamed cosine", torch.nn.functional.cosine_similarity(real_old_means, dream_means).tolist(),
          "norms real", real_old_means.norm(dim=1).tolist(), "dreamed", dream_means.norm(dim=1).tolist())

    trained = model.get_classifier()

    def lda(new_means: torch.Tensor, noise_var: torch.Tensor | None, source: str) -> torch.nn.Linear:
        head = copy.deepcopy(trained)
        if head.out_features < n_seen:
            head = torch.nn.Linear(head.in_features, n_seen)
            head.weight.data[:n_old] = trained.weight.data[:n_old]
            head.bias.data[:n_old] = trained.bias.data[:n_old]
        if source == "dreams":
            lda_head(head, n_old, new_means, noise_var, dreams=(d_feats, d_labels))
        elif source == "real_means":  # real old means, dreamed covariance
            known = {c: (real_old_means[c], 0.0) for c in range(n_old)}
            lda_head(head, n_old, new_means, noise_var, known=known, dreams=(d_feats, d_labels))
        elif source == "real_means_cov":  # real old means and covariance: the learner's class statistics (the default now)
            stats = server._state.class_statistics
            assert stats is not None and stats.holds_for(model)
            lda_head(head, n_old, new_means, noise_var, known={c: (m, 0.0) for c, m in stats.means_by_row().items()},
                     covariance=stats.covariance)
        elif source == "real_cov_dream_means":
            lda_head(head, n_old, new_means, noise_var, known={c: (dream_means[c], 0.0) for c in range(n_old)},
                     covariance=server._state.class_statistics.covariance)
        return head

    rows: dict[str, list[dict[str, float]]] = {}
    test_old = y_test < n_old

    def record(name: str, head: torch.nn.Linear) -> None:
        rows.setdefault(name, []).append({
            "all": accuracy(head, f_test, y_test, n_seen),
            "old": accuracy(head, f_test[test_old], y_test[test_old], n_seen),
            "new": accuracy(head, f_test[~test_old], y_test[~test_old], n_seen)})

    never = torch.nn.Linear(trained.in_features, n_seen)
    never.weight.data.zero_(); never.bias.data.fill_(-1e9)
    never.weight.data[:n_old] = trained.weight.data[:n_old]; never.bias.data[:n_old] = trained.bias.data[:n_old]
    record("never_updated", never)
    exact_new = class_means(f_new, y_new - n_old, k)
    for source in ("dreams", "real_means", "real_means_cov", "real_cov_dream_means"):
        record(f"{source}/noiseless", lda(exact_new, None, source))
    # oracle: LDA on real features of all seen classes
    head = copy.deepcopy(never)
    head.weight.data[n_old:] = head.weight.data[:n_old].mean(0)  # every row on the old scale, so the rule's scale is the old rows'
    lda_head(head, n_seen, exact_new[:0], dreams=(torch.cat([f_old, f_new]), torch.cat([y_old, y_new])))
    record("oracle_real_all/noiseless", head)
    for draw in range(args.draws):
        rel = release_class_means(f_new, y_new - n_old, k, clip, sigma, torch.Generator().manual_seed(100 + draw))
        for source in ("dreams", "real_means", "real_means_cov", "real_cov_dream_means"):
            record(f"{source}/eps{args.epsilon:g}", lda(rel.means, rel.noise_var, source))
    summary = {name: {key: [round(sum(r[key] for r in rs) / len(rs), 4),
                            round((sum((r[key] - sum(q[key] for q in rs) / len(rs)) ** 2 for r in rs) / max(1, len(rs) - 1)) ** 0.5, 4)]
                      for key in ("all", "old", "new")} for name, rs in rows.items()}
    print(f"{'rule':<32}{'all %':>14}{'old %':>14}{'new %':>14}")
    for name, s in summary.items():
        print(f"{name:<32}" + "".join(f"{100 * m:>9.1f}±{100 * sd:<4.1f}" for m, sd in s.values()))
    doc = {"benchmark": "head-rule-diagnosis", "seed": args.seed, "epsilon": args.epsilon, "release_noise_multiplier": sigma,
           "clip": clip, "summary_mean_std": summary, "rows": rows, "environment": environment(), "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
