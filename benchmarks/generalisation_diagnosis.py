"""Why ABD misses the generalisation target on CIFAR-derived protocols: one protocol, several config variants.

    PYTHONPATH=. .venv/bin/python benchmarks/generalisation_diagnosis.py cifar10-grey 1 default dream=500 \
        dream.content_temperature=1.0 epochs=15 losses.feature_kd_weight=0

Runs ABD over the 2 tasks of a ``benchmarks/generalisation.py`` protocol and
order (256 training and 200 test images per class) with
``LearnerConfig.short_budget(epochs=5, dream_iterations=40)`` changed only as
each variant says (``epochs=N``, ``dream=N``, ``SECTION.FIELD=V`` or
``FIELD=V``), and prints the final accuracy, the new and old classes'
accuracy, and how many new test images go to an old class and old ones to a
new class. 1 thread. Data: /work/shared/data/cifar10_jpeg.npz unless
ABD_CIFAR10 names another path.
"""
import os
import sys, time, dataclasses, argparse, json, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generalisation as G
from abd_edge import Learner, LearnerConfig
torch.set_num_threads(1)
proto, order = sys.argv[1], int(sys.argv[2])
variants = sys.argv[3:]
args = argparse.Namespace(tasks=2, classes_per_task=2, train_per_class=256, test_per_class=200,
                          data=G.Path(os.environ.get("ABD_CIFAR10", "/work/shared/data/cifar10_jpeg.npz")), folder_root=G.Path("runs/diag/folder"))
p = G.build(proto, order, args)
def parse(v):
    kw = {}
    for part in v.split(","):
        if part == "default": continue
        k, val = part.split("=")
        kw[k] = val
    return kw
for v in variants:
    kw = parse(v)
    ep = int(kw.pop("epochs", 5)); di = int(kw.pop("dream", 40))
    cfg = LearnerConfig.short_budget(epochs=ep, dream_iterations=di)
    cfg = dataclasses.replace(cfg, seed=order)
    for k, val in kw.items():
        if "." in k:
            sec, f = k.split(".")
            cfg = dataclasses.replace(cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **{f: type(getattr(getattr(cfg, sec), f))(val)})})
        else:
            cur = getattr(cfg, k)
            cfg = dataclasses.replace(cfg, **{k: val if isinstance(cur, str) else type(cur)(val)})
    t0 = time.time()
    L = Learner(cfg)
    for t, classes in enumerate(p.tasks):
        rep = L.learn_new_classes(p.train(t), dream=t < len(p.tasks) - 1, show_progress=False)
    seen = [c for task in p.tasks for c in task]
    te = p.test(seen)
    pred = L.predict(te).labels if hasattr(L.predict(te), "labels") else None
    acc = L.evaluate(te)
    new = L.evaluate(p.test(p.tasks[1])); old = L.evaluate(p.test(p.tasks[0]))
    # confusion: how many new test imgs predicted old
    out = L.predict(p.test(p.tasks[1]))
    labs = [str(x) for x in (out.labels if hasattr(out, "labels") else out)]
    to_old = sum(l in [str(c) for c in p.tasks[0]] for l in labs) / len(labs)
    out2 = L.predict(p.test(p.tasks[0]))
    labs2 = [str(x) for x in (out2.labels if hasattr(out2, "labels") else out2)]
    to_new = sum(l in [str(c) for c in p.tasks[1]] for l in labs2) / len(labs2)
    print(f"{proto} o{order} {v:40s} final {acc:.3f} new {new:.3f} old {old:.3f} new->old {to_old:.2f} old->new {to_new:.2f} train_acc {rep.train_accuracy:.3f} {time.time()-t0:.0f}s", flush=True)
