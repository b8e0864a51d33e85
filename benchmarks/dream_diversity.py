"""Dream diversity of saved learners: predicted-class shares of dreams, feature spread against real images, a grid.

For each saved learner (e.g. written by ``abd-edge bench --save-learner``)
it dreams ``--n`` images, lets the learner's classifier label them, and
reports the share of each class (uniform is 1/K) and, per class, the spread
of the dreams' penultimate features around their centroid divided by that
of the real test images of the class (1: as varied as real data). It draws
a grid with one row per class (the dreams predicted as it, up to 10) and
writes JSON with the numbers side by side.

    .venv/bin/python benchmarks/dream_diversity.py --learner before=runs/learner-before \
        --learner after=runs/learner-after --out benchmarks/results/dream-diversity-digits.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from abd_edge import Learner
from abd_edge.apps.bench import environment, load_benchmark_data
from abd_edge.data.augment import to_unit_float
from abd_edge.dreaming import measure_diversity


@torch.no_grad()
def grid(learner: Learner, k: int, n: int, per_class: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, _ = learner.dream(n, seed=0)
    labels = learner.model.eval()(x)[:, :k].argmax(1)
    fig, axes = plt.subplots(k, per_class, figsize=(per_class * 0.8, k * 0.8))
    for c in range(k):
        picked = x[labels == c][:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < picked.shape[0]:
                img = picked[j]
                img = (img - img.min()) / (img.max() - img.min() + 1e-8)
                ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
            if j == 0:
                ax.set_ylabel(f"{learner.class_names[c]}\n{int((labels == c).sum())}/{n}", fontsize=6)
    fig.suptitle(f"dreams by predicted class ({path.stem})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learner", action="append", required=True, help="NAME=DIR of a saved learner")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("runs/dream-diversity.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, test = load_benchmark_data(args.dataset, args.data_root)
    results = {}
    for spec in args.learner:
        name, _, directory = spec.partition("=")
        learner = Learner.load(directory, device="cpu")
        seen = [lab for lab in learner.registry.labels]
        part = test.select_labels(seen)
        x = learner.normalizer(to_unit_float(part.images))
        y = torch.tensor(learner.registry.indices_of(part.labels))
        # The generator stands for the classes seen at its last dreaming (a final task dreams none):
        # measure over those, the old classes of the next update.
        k_gen = max((r.class_indices[-1] + 1 for r in learner.history if r.dream_iterations), default=learner.num_classes)
        keep = y < k_gen
        d = measure_diversity(learner.generator, learner.model, k_gen, torch.Generator().manual_seed(0),
                              n=args.n, real_images=x[keep], real_labels=y[keep]).to_dict()
        png = args.out.with_name(f"{args.out.stem}-{name}.png")
        grid(learner, k_gen, args.n, 10, png)
        results[name] = {"learner": directory, "classes": learner.class_names[:k_gen], "config": learner.config.to_dict(),
                         "diversity": d, "grid": png.name}
        print(f"{name:>8}: shares {[round(100 * f, 1) for f in d['class_fractions']]} % (uniform "
              f"{100 * d['uniform_fraction']:.1f}), min {100 * d['min_fraction']:.1f}%, "
              f"spread ratio {d['mean_spread_ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
