"""Damage and faults for the adversarial suite (benchmarks/adversarial.py).

``rehash``, ``flip`` and ``random_edit`` damage saved files, recomputing the
hashes where the damage should get past them to the parsers.
``sigkill_loop`` starts a child that repeats a save, an export or a device
update, SIGKILLs it at a random moment and checks that the learner or bundle
still loads at a valid version; ``race`` measures predict from several
threads while another switches versions, counting errors and mixed versions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from abd_edge import Learner, runtime
from abd_edge.bundle_format import MANIFEST, MANIFEST_DIGEST, file_entries, manifest_digest

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- damage

def rehash(directory: Path, edit: Callable[[dict], Any] | None = None) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    if edit is not None:
        edit(manifest)
    if isinstance(manifest.get("files"), dict):
        manifest["files"].update(file_entries(directory, [n for n in manifest["files"] if (directory / n).is_file()]))
    (directory / MANIFEST).write_text(json.dumps(manifest))
    (directory / MANIFEST_DIGEST).write_text(manifest_digest(manifest) + "\n")


def flip(path: Path, at: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def random_edit(doc: Any, rng: random.Random) -> Any:
    """One random structural edit of a JSON document (replace by any type, delete, cut, truncate text)."""
    values = [None, True, 0, -1, 2**70, 1.5, "x", "", [], {}, ["x"], {"x": 1}, [0, 1]]
    paths: list[tuple] = []

    def walk(node: Any, prefix: tuple) -> None:
        paths.append(prefix)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, prefix + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, prefix + (i,))

    walk(doc, ())
    path = rng.choice(paths[1:] or paths)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    op = rng.choice(["replace", "replace", "delete", "cut"])
    if op == "replace" or not path:
        parent[path[-1]] = rng.choice(values)
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], (list, str)) and parent[path[-1]]:
        parent[path[-1]] = parent[path[-1]][: rng.randrange(len(parent[path[-1]]))]
    else:
        parent[path[-1]] = rng.choice(values)
    return doc


# ----------------------------------------------------------------------------- SIGKILL loops

CHILD = r"""
import sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from conftest import make_task
from abd_edge import Learner, runtime
from abd_edge.bundle_format import MANIFEST, MANIFEST_DIGEST, file_entries, manifest_digest
from abd_edge.export import export_bundle
from abd_edge.export.quality import QualityGate
kind, target, source = {kind!r}, {target!r}, {source!r}
if kind == "update":
    dev = runtime.open(target, budget=runtime.DeviceBudget(epochs=1, dream_iterations=0), quality=QualityGate(enabled=False))
    data = make_task([20, 21], n_per_class=8, seed=1)
else:
    learners = [Learner.load(source + "/a"), Learner.load(source + "/b")]
print("ready", flush=True)
i = 0
while True:
    if kind == "save":
        learners[i % 2].save(target)
    elif kind == "export":
        export_bundle(learners[i % 2], target)
    else:
        dev.learn_new_classes(data)
        dev.rollback()
    i += 1
    print("done", i, flush=True)
"""


def check_after_kill(kind: str, target: Path, expected: list[set]) -> tuple[bool, str]:
    try:
        if kind == "save":
            got = set(Learner.load(target).registry.labels)
            ok = got in expected
            leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
            return ok and not leftovers, f"labels {got}, leftovers {leftovers}"
        dev = runtime.open(target)
        ok = set(dev.labels) in expected
        return ok, f"version {dev.version}, labels {dev.labels}"
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"


def sigkill_loop(kind: str, n: int, target: Path, source: Path, expected: list[set], window_s: float,
                 rng: random.Random) -> dict[str, Any]:
    """Start a child that repeats the operation, SIGKILL it at a random moment, check the target; ``n`` times."""
    survived, details, completed = 0, [], 0
    script = CHILD.format(tests=str(REPO / "tests"), kind=kind, target=str(target), source=str(source))
    env = dict(os.environ, OMP_NUM_THREADS="1", ABD_EDGE_PROGRESS="0", PYTHONWARNINGS="ignore")
    for _ in range(n):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, cwd=REPO, env=env)
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("ready"):
            child.kill()
            child.wait()
            details.append("child failed to start")
            continue
        time.sleep(rng.uniform(0.0, window_s))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        completed += out.count("done")
        ok, why = check_after_kill(kind, target, expected)
        if kind == "save" and ok is False and "leftovers" in why:
            # leftovers are allowed right after a kill; they must be gone after the next load
            Learner.load(target)
            ok, why = check_after_kill(kind, target, expected)
        survived += int(ok)
        if not ok:
            details.append(why)
    return {"kills": n, "survived": survived, "operations_completed_between_kills": completed, "failures": details[:10]}


# ----------------------------------------------------------------------------- the race


def race(bundle: Path, seconds: float, switching: bool, readers: int = 4) -> dict[str, Any]:
    dev = runtime.open(bundle, threads=1)
    classes = {"v000001": {0, 1}, "v000002": {0, 1, 5, 6}}
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
    stop = threading.Event()
    calls, errors, switches = [0] * readers, [0] * readers, [0]

    def reader(k: int) -> None:
        while not stop.is_set():
            try:
                p = dev.predict(x)
                if p.probabilities.shape[1] != len(classes[p.version]) or not set(p.labels) <= classes[p.version]:
                    raise AssertionError("mixed versions")
                calls[k] += 1
            except Exception:  # noqa: BLE001 - counted
                errors[k] += 1

    def switcher() -> None:
        while not stop.is_set():
            dev.rollback("v000001" if dev.version == "v000002" else "v000002")
            switches[0] += 1

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(readers)]
    if switching:
        threads.append(threading.Thread(target=switcher))
    start = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    return {"readers": readers, "seconds": round(elapsed, 2), "calls": sum(calls), "errors": sum(errors),
            "switches": switches[0], "predicts_per_s": round(sum(calls) / elapsed, 1),
            "images_per_s": round(sum(calls) * len(x) / elapsed, 1)}
