"""ABD with one extra loss term, on one protocol of the generalisation suite: does any close the old/new gap?

    PYTHONPATH=. .venv/bin/python benchmarks/generalisation_loss_variants.py cifar10-16px 0 none full=1 full=10 lwf=1

A diagnosis tool, not a method of the library. Each variant adds a term to
ABD's incremental loss (``abd_edge.methods.abd.ABD.incremental_loss``) for
that run only:

* ``none``: ABD as it is;
* ``full=L``: L * mean_i ||f_new - f_old||^2 / D, distillation of every
  feature dimension, next to ABD's importance-weighted one (which, with 2 old
  classes, holds only the 2 directions the old head reads);
* ``lwf=L``: L * T^2 * CE(softmax(old logits / T), softmax(new old-class
  logits / T)), T = 2, on [real; dreamed], LwF-style logit distillation.

Budget and data as ``benchmarks/generalisation_diagnosis.py``:
``LearnerConfig.short_budget(epochs=5, dream_iterations=40)`` (``E`` and
``D`` in the environment change them; ``SEED`` sets the learner's seed,
which is otherwise the order's), run by ``generalisation.run``, 2 tasks of 2 classes, 256 training
and 200 test images per class, 1 thread. Data: ABD_CIFAR10, else
/work/shared/data/cifar10_jpeg.npz. Prints the final, new and old classes'
accuracy and the training accuracy of the last task.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generalisation as G  # noqa: E402

import abd_edge.methods.abd as abd_method  # noqa: E402

torch.set_num_threads(1)
proto, order = sys.argv[1], int(sys.argv[2])
variants = sys.argv[3:]
args = argparse.Namespace(tasks=2, classes_per_task=2, train_per_class=256, test_per_class=200,
                          data=G.Path(os.environ.get("ABD_CIFAR10", "/work/shared/data/cifar10_jpeg.npz")),
                          folder_root=G.Path("runs/diag/folder"))
p = G.build(proto, order, args)
abd_loss = abd_method.ABD.incremental_loss


def with_extra(kind: str, weight: float):
    def loss(self, ctx, out):
        total, parts = abd_loss(self, ctx, out)
        if kind == "full":
            extra = weight * ((out.features - out.old_features) ** 2).sum(1).mean() / out.features.shape[1]
        elif kind == "lwf":
            log_p = torch.log_softmax(out.logits[:, :ctx.n_old] / 2, 1)
            q = torch.softmax(out.old_logits / 2, 1)
            extra = weight * -(q * log_p).sum(1).mean() * 4
        else:
            return total, parts
        return total + extra, {**parts, "extra": extra}
    return loss


seed = int(os.environ.get("SEED", order))
try:
    for v in variants:
        kind, _, weight = v.partition("=")
        abd_method.ABD.incremental_loss = with_extra(kind, float(weight or 0))
        r = G.run(p, "abd", int(os.environ.get("E", 5)), int(os.environ.get("D", 40)), {"seed": str(seed)})
        last = r["tasks"][-1]
        print(f"{proto} o{order} seed {seed} {v:14s} final {r['final_accuracy']:.3f} new {last['new_classes_accuracy']:.3f} "
              f"old {last['old_classes_accuracy']:.3f} train_acc {last['train_accuracy']:.3f} {r['seconds']:.0f}s", flush=True)
finally:
    abd_method.ABD.incremental_loss = abd_loss
