"""Adversarial suite (issue 8): hostile inputs to every entry point, SIGKILLs at random points, predict under switches.

    python benchmarks/adversarial.py --threads 1 --out benchmarks/results/adversarial.json

For each entry point (Learner.save, Learner.load, runtime.open, predict,
learn_new_classes, rollback) it runs a battery of cases, each either one that
must be refused or one that must work, and classifies the outcome:

* clear error: refused with an AbdEdgeError and nothing changed on disk;
* ok: a legitimate input that worked;
* crash: any other exception (a raw KeyError, an ONNX Runtime error, ...);
* silent acceptance: a case that must be refused but was not;
* wrongly refused: a legitimate case refused;
* data loss: a file this library did not write changed or vanished, or a
  refused call changed the learner or bundle.

Random edits (values of any JSON type, deletions, truncations) of saved
learners' states and of bundle manifests, with hashes recomputed, add
``--random`` cases per parser. Then SIGKILLs inside saves, exports and
device updates (``--kills`` each), and predict from 4 threads while versions
switch (benchmarks/adversarial_faults.py). Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_task, tiny_config  # noqa: E402  (tiny, fast learners: the suite is about robustness)

from abd_edge import Learner, runtime  # noqa: E402
from abd_edge.apps.bench import environment  # noqa: E402
from abd_edge.bundle_format import MANIFEST, MANIFEST_DIGEST  # noqa: E402
from abd_edge.errors import AbdEdgeError  # noqa: E402
from abd_edge.export import export_bundle  # noqa: E402
from abd_edge.export.quality import QualityGate  # noqa: E402
from adversarial_faults import flip, race, random_edit, rehash, sigkill_loop  # noqa: E402  (benchmarks/adversarial_faults.py)

UNGATED = QualityGate(enabled=False)


# ----------------------------------------------------------------------------- bookkeeping


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for root in roots:
        if root.is_symlink() or root.is_file():
            out[str(root)] = root.read_bytes() if root.is_file() else None
            continue
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            regular = p.is_file() and not p.is_symlink()  # never open a FIFO: it would block
            out[str(p)] = p.read_bytes() if regular else None
    return out


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[dict[str, str]] = []

    def case(self, entry: str, name: str, must_fail: bool, fn: Callable[[], Any],
             untouched: tuple[Path, ...] = (), foreign: tuple[Path, ...] = ()) -> None:
        """Run one case. ``untouched``: must not change if refused; ``foreign``: must never change."""
        before_u, before_f = snapshot(*untouched), snapshot(*foreign)
        try:
            fn()
            outcome = "silent_acceptance" if must_fail else "ok"
            detail = ""
        except AbdEdgeError as e:
            outcome = "clear_error" if must_fail else "wrongly_refused"
            detail = f"{type(e).__name__}: {e}"[:200]
        except Exception as e:  # noqa: BLE001 - a crash is what is being counted
            outcome, detail = "crash", f"{type(e).__name__}: {e}"[:200]
        # a refused (or crashed) call must leave its target as it was; a foreign file must never change
        lost = snapshot(*foreign) != before_f or (outcome in ("clear_error", "crash") and snapshot(*untouched) != before_u)
        c = self.counts[entry]
        c["cases"] += 1
        c[outcome] += 1
        c["data_loss"] += int(lost)
        if outcome not in ("ok", "clear_error") or lost:
            self.failures.append({"entry": entry, "case": name, "outcome": outcome, "data_loss": str(lost), "detail": detail})


# ----------------------------------------------------------------------------- the cases


def save_cases(t: Tally, learner: Learner, work: Path) -> None:
    e = "Learner.save"
    d = work / "save"
    d.mkdir()

    def fresh(name: str) -> Path:
        return d / name

    p = fresh("notes")
    p.mkdir()
    (p / "my_notes.txt").write_text("mine")
    t.case(e, "non-empty directory (a file)", True, lambda: learner.save(p), foreign=(p,))
    p = fresh("photos")
    (p / "sub").mkdir(parents=True)
    (p / "sub" / "photo.jpg").write_bytes(b"jpeg")
    t.case(e, "non-empty directory (a subdirectory)", True, lambda: learner.save(p), foreign=(p,))
    f = fresh("file.txt")
    f.write_text("precious")
    t.case(e, "a regular file", True, lambda: learner.save(f), foreign=(f,))
    t.case(e, "a regular file, again", True, lambda: learner.save(f), foreign=(f,))
    real = fresh("real")
    real.mkdir()
    link = fresh("link")
    link.symlink_to(real)
    t.case(e, "a symlink to an empty directory", True, lambda: learner.save(link), foreign=(real, link))
    empty = fresh("empty")
    empty.mkdir()
    t.case(e, "an empty directory", False, lambda: learner.save(empty))
    t.case(e, "a new path in a new parent", False, lambda: learner.save(fresh("a/b/c")))
    t.case(e, "over a saved learner", False, lambda: learner.save(empty))
    (empty / "readme.txt").write_text("mine")
    t.case(e, "over a saved learner holding a foreign file", True, lambda: learner.save(empty),
           untouched=(empty,), foreign=(empty / "readme.txt",))
    (empty / "readme.txt").unlink()
    left = d / ".empty.tmp-killed"
    left.mkdir()
    (left / "weights.safetensors").write_bytes(b"0" * 10)

    def save_and_check_cleaned() -> None:
        learner.save(empty)
        if left.exists():
            raise AssertionError("staging leftover survived a save")

    t.case(e, "with a staging leftover beside it", False, save_and_check_cleaned)
    odd = d / ".empty.tmp-foreign"
    odd.mkdir()
    (odd / "holiday.jpg").write_text("not ours")
    t.case(e, "with a look-alike staging directory holding a foreign file", False, lambda: learner.save(empty),
           foreign=(odd,))
    victim = fresh("victim.txt")
    victim.write_text("thesis")
    broken = fresh("broken")
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    t.case(e, "a directory with a garbled manifest", True, lambda: learner.save(broken), foreign=(broken,))


def load_cases(t: Tally, learner: Learner, work: Path, n_random: int, rng: random.Random) -> None:
    e = "Learner.load"
    base = work / "load-base"
    learner.save(base)
    state0 = json.loads((base / "state.json").read_text())

    def case(name: str, must_fail: bool, damage: Callable[[Path], Any]) -> None:
        d = work / f"load-{t.counts[e]['cases']}"
        shutil.copytree(base, d, symlinks=True)
        damage(d)
        t.case(e, name, must_fail, lambda: Learner.load(d), untouched=(d,))

    def set_state(d: Path, **fields: Any) -> None:
        s = json.loads((d / "state.json").read_text())
        s.update(fields)
        (d / "state.json").write_text(json.dumps(s))
        rehash(d)

    case("untouched", False, lambda d: None)
    case("re-indented manifest", False, lambda d: (d / MANIFEST).write_text(json.dumps(json.loads((d / MANIFEST).read_text()), indent=5)))
    case("weights byte flipped", True, lambda d: flip(d / "weights.safetensors"))
    case("weights truncated", True, lambda d: (d / "weights.safetensors").write_bytes((d / "weights.safetensors").read_bytes()[:100]))
    case("weights deleted", True, lambda d: (d / "weights.safetensors").unlink())
    case("weights unlisted, then flipped", True, lambda d: (rehash(d, lambda m: m["files"].pop("weights.safetensors")), flip(d / "weights.safetensors")))
    case("files={} and class names edited", True, lambda d: ((d / "state.json").write_text((d / "state.json").read_text().replace('"zero"', '"cat"')), rehash(d, lambda m: m.__setitem__("files", {}))))
    case("manifest edited, digest stale", True, lambda d: (d / MANIFEST).write_text((d / MANIFEST).read_text().replace('"0.1.0"', '"6.6.6"')))
    case("manifest digest deleted", True, lambda d: (d / MANIFEST_DIGEST).unlink())
    case("manifest not JSON", True, lambda d: (d / MANIFEST).write_text("{"))
    case("format_version 99", True, lambda d: rehash(d, lambda m: m.__setitem__("format_version", 99)))
    case("state: tasks_learned='x'", True, lambda d: set_state(d, tasks_learned="x"))
    case("state: history=['x']", True, lambda d: set_state(d, history=["x"]))
    case("state: input_shape=[1, 8]", True, lambda d: set_state(d, input_shape=[1, 8]))
    case("state: registry='x'", True, lambda d: set_state(d, registry="x"))
    case("state: config=[]", True, lambda d: set_state(d, config=[]))
    case("state: head_capacity=0", True, lambda d: set_state(d, head_capacity=0))
    case("state: a list", True, lambda d: ((d / "state.json").write_text("[]"), rehash(d)))
    case("weights a symlink to a copy", True, lambda d: (shutil.copy(d / "weights.safetensors", work / "w.copy"),
                                                          (d / "weights.safetensors").unlink(),
                                                          (d / "weights.safetensors").symlink_to(work / "w.copy")))
    case("a FIFO inside", True, lambda d: os.mkfifo(d / "pipe"))
    case("an extra foreign file inside", False, lambda d: (d / "notes.txt").write_text("mine"))
    for i in range(n_random):
        doc = random_edit(json.loads(json.dumps(state0)), rng)
        case(f"random state edit {i}", False, lambda d, doc=doc: ((d / "state.json").write_text(json.dumps(doc)), rehash(d)))
    # random edits may or may not leave a usable state: only crashes and data loss count for them
    for f in list(t.failures):
        if f["entry"] == e and f["case"].startswith("random") and f["outcome"] == "wrongly_refused":
            t.failures.remove(f)
            t.counts[e]["wrongly_refused"] -= 1
            t.counts[e]["clear_error"] += 1


def bundle_cases(t: Tally, bundle: Path, work: Path, n_random: int, rng: random.Random) -> None:
    e = "runtime.open"
    v2 = Path("versions") / "v000002"
    m0 = json.loads((bundle / v2 / MANIFEST).read_text())

    def case(name: str, must_fail: bool, damage: Callable[[Path], Any], random_edit_case: bool = False) -> None:
        d = work / f"open-{t.counts[e]['cases']}"
        shutil.copytree(bundle, d, symlinks=True)
        damage(d)
        before = Counter(t.counts[e])
        t.case(e, name, must_fail, lambda: runtime.open(d).predict(np.zeros((2, 8, 8, 1), np.uint8)), untouched=(d,))
        if random_edit_case and t.counts[e]["wrongly_refused"] > before["wrongly_refused"]:
            t.failures.pop()
            t.counts[e]["wrongly_refused"] -= 1
            t.counts[e]["clear_error"] += 1

    outside = work / "outside"
    shutil.copytree(bundle / v2, outside)

    def relink(d: Path, rel: str) -> None:
        p = d / v2 / rel if rel else d / v2
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        p.symlink_to(outside / rel if rel else outside)

    case("untouched", False, lambda d: None)
    case("classes cut to one, re-hashed", True, lambda d: rehash(d / v2, lambda m: m.__setitem__("classes", m["classes"][:1])))
    case("input shape 16x16, re-hashed", True, lambda d: rehash(d / v2, lambda m: m["input"].__setitem__("shape", [None, 16, 16, 1])))
    case("class name edited, not re-hashed", True, lambda d: (d / v2 / MANIFEST).write_text((d / v2 / MANIFEST).read_text().replace('"five"', '"cat"')))
    case("class name edited, re-hashed", False, lambda d: rehash(d / v2, lambda m: m["classes"][2].__setitem__("name", "cat")))
    case("unlisted generator.onnx of random bytes", True, lambda d: (d / v2 / "generator.onnx").write_bytes(os.urandom(4000)))
    case("classifier.onnx random bytes, re-hashed", True, lambda d: ((d / v2 / "classifier.onnx").write_bytes(os.urandom(4000)), rehash(d / v2)))
    case("classifier.onnx byte flipped", True, lambda d: flip(d / v2 / "classifier.onnx"))
    case("classifier.onnx deleted", True, lambda d: (d / v2 / "classifier.onnx").unlink())
    case("classifier.onnx a symlink", True, lambda d: relink(d, "classifier.onnx"))
    case("learner/ a symlink", True, lambda d: relink(d, "learner"))
    case("version directory a symlink", True, lambda d: relink(d, ""))
    case("CURRENT a symlink", True, lambda d: ((d / "CURRENT").unlink(), (d / "CURRENT").symlink_to(outside / MANIFEST)))
    case("CURRENT garbage", True, lambda d: (d / "CURRENT").write_bytes(b"\x00\xff"))
    case("CURRENT names a missing version", True, lambda d: (d / "CURRENT").write_text("v000009\n"))
    case("CURRENT names ../", True, lambda d: (d / "CURRENT").write_text("../../etc\n"))
    case("format_version 99", True, lambda d: rehash(d / v2, lambda m: m.__setitem__("format_version", 99)))
    case("classes indices not 0..n-1, re-hashed", True, lambda d: rehash(d / v2, lambda m: m["classes"][0].__setitem__("index", 9)))
    case("input dtype float32, re-hashed", True, lambda d: rehash(d / v2, lambda m: m["input"].__setitem__("dtype", "float32")))
    case("no bundle here", True, lambda d: shutil.rmtree(d / "versions"))
    for i in range(n_random):
        doc = random_edit(json.loads(json.dumps(m0)), rng)
        case(f"random manifest edit {i}", False,
             lambda d, doc=doc: ((d / v2 / MANIFEST).write_text(json.dumps(doc)), rehash(d / v2)), random_edit_case=True)


def predict_cases(t: Tally, bundle: Path) -> None:
    e = "predict"
    dev = runtime.open(bundle)
    good = np.zeros((3, 8, 8, 1), np.uint8)
    cases: list[tuple[str, bool, Any]] = [
        ("uint8 NHWC batch", False, good),
        ("one HWC image", False, good[0]),
        ("float32", True, good.astype(np.float32)),
        ("float64 with NaN", True, np.full((1, 8, 8, 1), np.nan)),
        ("NCHW", True, np.zeros((3, 1, 8, 8), np.uint8)),
        ("3 channels", True, np.zeros((3, 8, 8, 3), np.uint8)),
        ("16x16", True, np.zeros((3, 16, 16, 1), np.uint8)),
        ("empty batch", True, np.zeros((0, 8, 8, 1), np.uint8)),
        ("5-d", True, np.zeros((1, 3, 8, 8, 1), np.uint8)),
        ("scalar", True, np.uint8(3)),
        ("None", True, None),
        ("a string", True, "image.png"),
        ("nested list of ints", True, [[1, 2], [3, 4]]),
        ("object array", True, np.array([None, 1], dtype=object)),
        ("bool array", True, np.zeros((1, 8, 8, 1), bool)),
        ("non-contiguous uint8", False, np.zeros((3, 8, 16, 1), np.uint8)[:, :, ::2]),
    ]
    for name, bad, x in cases:
        t.case(e, name, bad, lambda x=x: dev.predict(x), untouched=(bundle,))
    t.case(e, "evaluate with unknown labels", True, lambda: dev.evaluate(good, [0, 1, 99]))
    t.case(e, "evaluate with too few labels", True, lambda: dev.evaluate(good, [0, 1]))
    t.case(e, "batch_size=0", True, lambda: dev.logits(good, batch_size=0))
    t.case(e, "dream without a generator", True, lambda: dev.dream(4))


def update_cases(t: Tally, bundle: Path, work: Path) -> None:
    e = "learn_new_classes"
    d = work / "update"
    shutil.copytree(bundle, d)
    fast = runtime.DeviceBudget(epochs=1, dream_iterations=0)
    dev = runtime.open(d, budget=fast, quality=UNGATED)
    x, y = make_task([7, 8], n_per_class=8, seed=5)
    xn = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    t.case(e, "labels shorter than images", True, lambda: dev.learn_new_classes((xn, y[:-1])), untouched=(d,))
    t.case(e, "empty", True, lambda: dev.learn_new_classes((xn[:0], [])), untouched=(d,))
    t.case(e, "labels already learned", True, lambda: dev.learn_new_classes((xn, [0] * len(y))), untouched=(d,))
    t.case(e, "wrong image size", True, lambda: dev.learn_new_classes((np.zeros((4, 16, 16, 1), np.uint8), [7, 7, 8, 8])), untouched=(d,))
    t.case(e, "NaN float images", True, lambda: dev.learn_new_classes((np.full((4, 8, 8, 1), np.nan, np.float32), [7, 7, 8, 8])), untouched=(d,))
    t.case(e, "class_names not matching", True, lambda: dev.learn_new_classes((xn, y), {1: "x"}), untouched=(d,))
    t.case(e, "a path that does not exist", True, lambda: dev.learn_new_classes(str(work / "nope")), untouched=(d,))
    t.case(e, "budget epochs=0", True, lambda: dev.learn_new_classes((xn, y), budget=runtime.DeviceBudget(epochs=0)), untouched=(d,))
    t.case(e, "gate threshold 2.0", True, lambda: dev.learn_new_classes((xn, y), quality=QualityGate(min_train_accuracy=2.0)), untouched=(d,))
    t.case(e, "refused by a strict gate", True, lambda: dev.learn_new_classes((xn, y), quality=QualityGate(min_train_accuracy=1.0, max_abs_logit=1e-3)), untouched=(d,))
    # A version whose later-task learning rate is absurd: the update blows up and must not be committed.
    blow = work / "update-blow"
    shutil.copytree(bundle, blow)
    vdir = blow / "versions" / "v000002"
    s = json.loads((vdir / "learner" / "state.json").read_text())
    s["config"]["later_tasks"]["lr"] = 5.0
    (vdir / "learner" / "state.json").write_text(json.dumps(s))
    rehash(vdir / "learner")
    rehash(vdir)
    dev_blow = runtime.open(blow, budget=fast)
    xb, yb = make_task([7, 8], n_per_class=24, seed=5)
    xbn = np.ascontiguousarray(xb.permute(0, 2, 3, 1).numpy())
    t.case(e, "diverging update (lr 5), default gate", True, lambda: dev_blow.learn_new_classes((xbn, yb)), untouched=(blow,))
    victim = work / "victim.txt"
    victim.write_text("thesis " * 50)
    lock = d / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    t.case(e, ".lock a symlink to a user file", True, lambda: dev.learn_new_classes((xn, y)), foreign=(victim,))
    lock.unlink()
    t.case(e, "a legitimate update", False, lambda: dev.learn_new_classes((xn, y)))

    e = "rollback"
    t.case(e, "to a garbage name", True, lambda: dev.rollback("../v1"), untouched=(d,))
    t.case(e, "to a version not kept", True, lambda: dev.rollback("v000042"), untouched=(d,))
    t.case(e, "to the parent", False, lambda: dev.rollback())
    t.case(e, "forward again", False, lambda: dev.rollback("v000003"))
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    t.case(e, ".lock a symlink to a user file", True, lambda: dev.rollback("v000002"), foreign=(victim,))
    lock.unlink()
    os.link(victim, lock)
    t.case(e, ".lock a hard link to a user file", True, lambda: dev.rollback("v000002"), foreign=(victim,))
    lock.unlink()
    root = work / "first"
    shutil.copytree(bundle, root)
    shutil.rmtree(root / "versions" / "v000002")
    (root / "CURRENT").write_text("v000001\n")
    t.case(e, "a version without parent", True, lambda: runtime.open(root).rollback(), untouched=(root,))


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--random", type=int, default=20, help="random edits per parser (learner state, bundle manifest)")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs per operation (save, export, update)")
    ap.add_argument("--race-seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/adversarial.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("ABD_EDGE_PROGRESS", "0")
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="abd-adv-"))
    t0 = time.perf_counter()
    try:
        learner = Learner(tiny_config("finetune"))
        learner.learn_new_classes(make_task([0, 1], n_per_class=24), class_names={0: "zero", 1: "one"}, show_progress=False)
        bundle = work / "bundle"
        export_bundle(learner, bundle)
        learner_a = Learner.load(_saved(learner, work / "src" / "a"))
        learner.learn_new_classes(make_task([5, 6], n_per_class=24, seed=3), class_names={5: "five", 6: "six"},
                                  show_progress=False)
        export_bundle(learner, bundle)
        _saved(learner, work / "src" / "b")

        t = Tally()
        save_cases(t, learner, work)
        load_cases(t, learner, work, a.random, rng)
        bundle_cases(t, bundle, work, a.random, rng)
        predict_cases(t, bundle)
        update_cases(t, bundle, work)
        print(f"cases done in {time.perf_counter() - t0:.0f} s", flush=True)

        races = {"without_switching": race(bundle, a.race_seconds, False), "with_switching": race(bundle, a.race_seconds, True)}
        print(f"race done in {time.perf_counter() - t0:.0f} s", flush=True)

        labels_a, labels_b = set(learner_a.registry.labels), set(learner.registry.labels)
        kills: dict[str, Any] = {}
        # save: a learner saved over and over in place
        save_target = work / "kill-save" / "learner"
        _saved(learner_a, save_target)
        (save_target.parent / "my_notes.txt").write_text("beside the learner, never touched")
        kills["save"] = sigkill_loop("save", a.kills, save_target, work / "src", [labels_a, labels_b], 1.5, rng)
        kills["save"]["user_file_intact"] = (save_target.parent / "my_notes.txt").read_text() == "beside the learner, never touched"
        print(f"save kills done in {time.perf_counter() - t0:.0f} s", flush=True)
        exp_target = work / "kill-export"
        shutil.copytree(bundle, exp_target)
        kills["export"] = sigkill_loop("export", a.kills, exp_target, work / "src", [labels_a, labels_b], 12.0, rng)
        print(f"export kills done in {time.perf_counter() - t0:.0f} s", flush=True)
        upd_target = work / "kill-update"
        shutil.copytree(bundle, upd_target)
        kills["update"] = sigkill_loop("update", a.kills, upd_target, work / "src",
                                       [labels_a, labels_b, labels_b | {20, 21}], 20.0, rng)
        print(f"update kills done in {time.perf_counter() - t0:.0f} s", flush=True)

        entries = {k: dict(v) for k, v in t.counts.items()}
        keys = ["cases", "ok", "clear_error", "crash", "silent_acceptance", "wrongly_refused", "data_loss"]
        totals = {k: sum(v.get(k, 0) for v in entries.values()) for k in keys}
        doc = {
            "command": "python benchmarks/adversarial.py " + " ".join(sys.argv[1:]),
            "environment": environment(),
            "threads": a.threads,
            "seconds": round(time.perf_counter() - t0, 1),
            "entry_points": {k: {key: v.get(key, 0) for key in keys} for k, v in entries.items()},
            "totals": totals,
            "failures": t.failures,
            "sigkill": kills,
            "race": races,
        }
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{'entry point':<20}" + "".join(f"{k:>18}" for k in keys))
        for name, v in doc["entry_points"].items():
            print(f"{name:<20}" + "".join(f"{v[k]:>18}" for k in keys))
        print(f"{'total':<20}" + "".join(f"{totals[k]:>18}" for k in keys))
        for k, v in kills.items():
            print(f"SIGKILL during {k}: survived {v['survived']}/{v['kills']} ({v['operations_completed_between_kills']} operations completed)")
        for k, v in races.items():
            print(f"race {k}: {v['calls']} predicts, {v['errors']} errors, {v['switches']} switches, {v['predicts_per_s']}/s")
        for f in t.failures:
            print("FAILURE", f)
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _saved(learner: Learner, path: Path) -> Path:
    learner.save(path)
    return path


if __name__ == "__main__":
    main()
