"""Logit probe behind benchmarks/results/generalisation-diagnosis/l1.log: where ABD's old/new boundary falls.

    PYTHONPATH=. .venv/bin/python benchmarks/generalisation_logits.py cifar10-grey 1 [none|weight_align]

After task 1 it dreams 256 images and records the task-1 model's logits on
them; after task 2 (``short_budget(epochs=5, dream_iterations=40)``) it
prints, for those dreams and for the old and new classes' test images, the
mean highest old-class and new-class logit and the share predicted new, and
the head rows' norms.
"""
import os
import sys, dataclasses, argparse, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generalisation as G
from abd_edge import Learner, LearnerConfig
torch.set_num_threads(1)
proto, order = sys.argv[1], int(sys.argv[2]); hb = sys.argv[3] if len(sys.argv) > 3 else "none"
args = argparse.Namespace(tasks=2, classes_per_task=2, train_per_class=256, test_per_class=200,
                          data=G.Path(os.environ.get("ABD_CIFAR10", "/work/shared/data/cifar10_jpeg.npz")), folder_root=G.Path("runs/diag/folder"))
p = G.build(proto, order, args)
cfg = dataclasses.replace(LearnerConfig.short_budget(epochs=5, dream_iterations=40), seed=order, head_balance=hb)
L = Learner(cfg)
L.learn_new_classes(p.train(0), show_progress=False)
d_x, d_y = L.dream(256)
old_model_logits = L.model.eval()(d_x).detach()
L.learn_new_classes(p.train(1), dream=False, show_progress=False)
def stats(name, lg):
    o, n = lg[:, :2], lg[:, 2:4]
    print(f"{name:10s} max-old {o.max(1).values.mean():7.2f}  max-new {n.max(1).values.mean():7.2f}  pred-new {(n.max(1).values > o.max(1).values).float().mean():.2f}")
stats("dreams(t1)", old_model_logits)
with torch.no_grad():
    stats("dreams", L.model.eval()(d_x))
stats("old test", L.logits(p.test(p.tasks[0])))
stats("new test", L.logits(p.test(p.tasks[1])))
W = L.model.get_classifier().weight[:4]
print("row norms", W.norm(dim=1).tolist(), "bias", L.model.get_classifier().bias[:4].tolist())
print("final", L.evaluate(p.test(p.tasks[0] + p.tasks[1])))
