"""The device runtime: bundle verification, torch-free prediction, local updates, faults."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from abd_edge import Learner, runtime
from abd_edge.errors import (
    BundleError,
    BundleIntegrityError,
    BundleLockedError,
    BundleMissingFileError,
    BundleVersionError,
    ImageSpecError,
)
from abd_edge.export import export_bundle
from abd_edge.export.quality import QualityGate
from conftest import REPO, make_task, tiny_config

FAST = runtime.DeviceBudget(epochs=1, dream_iterations=2)
# These tests check the update mechanics with 2-step updates that learn nothing;
# the quality gate (tests/test_reliability_gate.py) would rightly refuse them.
UNGATED = QualityGate(enabled=False)


def nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory):
    """A bundle exported from a tiny ABD learner that knows classes 0 and 1."""
    root = tmp_path_factory.mktemp("bundles")
    learner = Learner(tiny_config("abd"))
    x, y = make_task([0, 1])
    learner.learn_new_classes((x, y), class_names={0: "zero", 1: "one"})
    info = export_bundle(learner, root / "base")
    return root / "base", learner, x, info


@pytest.fixture
def bundle(base_bundle, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(base_bundle[0], path)
    return path


def test_export_then_predict_matches_torch(base_bundle):
    path, learner, x, info = base_bundle
    assert info["version"] == "v000001" and info["parent_version"] is None
    assert info["parity"]["classifier"]["max_abs_diff"] <= 1e-4 and info["parity"]["classifier"]["top1_equal"]
    assert "generator" not in info["parity"] and "generator.onnx" not in info["files"]  # the generator travels once
    dev = runtime.open(path)
    assert dev.class_names == ["zero", "one"] and dev.labels == [0, 1] and dev.input_shape == (8, 8, 1)
    ort_logits = dev.logits(nhwc(x))
    assert np.abs(ort_logits - learner.logits(x).numpy()).max() <= 1e-4
    pred, torch_pred = dev.predict(nhwc(x[:3])), learner.predict(x[:3])
    assert pred.names == [learner.class_names[i] for i in torch_pred.indices.tolist()]
    from abd_edge.prediction import PredictionResult  # one result type for the engine and the device

    assert isinstance(pred, PredictionResult) and isinstance(torch_pred, PredictionResult)
    assert pred.labels == torch_pred.labels and pred.version == "v000001"
    assert dev.predict(nhwc(x[:1])[0]).indices.shape == (1,)  # a single HWC image
    m = dev.manifest
    assert m.input.dtype == "uint8" and m.input.shape == (8, 8, 1) and m.format_version == 2
    assert [e["epsilon"] for e in m.privacy_ledger] == ["inf"] and m.parent_version is None and m.opset >= 17
    assert m.generator.zdim > 0 and not m.generator.onnx and not m.serve_only
    for name in ("classifier.onnx", "learner/weights.safetensors", "learner/state.json"):
        assert m.files[name].bytes > 0 and len(m.files[name].sha256) == 64


def test_predict_refuses_wrong_input(bundle):
    dev = runtime.open(bundle)
    good = np.zeros((2, 8, 8, 1), np.uint8)
    with pytest.raises(ImageSpecError, match=r"dtype float32.*uint8 images shaped \(N, 8, 8, 1\)"):
        dev.predict(good.astype(np.float32))
    with pytest.raises(ImageSpecError, match=r"shape \(2, 8, 8, 3\).*\(N, 8, 8, 1\)"):
        dev.predict(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ImageSpecError, match=r"shape \(2, 1, 8, 8\)"):
        dev.predict(np.zeros((2, 1, 8, 8), np.uint8))


def test_runtime_predicts_without_torch(bundle):
    script = f"""
import sys
sys.modules['torch'] = None  # any 'import torch' now fails
import numpy as np
from abd_edge import runtime
dev = runtime.open({str(bundle)!r})
p = dev.predict(np.zeros((3, 8, 8, 1), np.uint8))
assert p.indices.shape == (3,)
assert 'torch' not in [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] == 'torch']
print('ok', p.names)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete", "version"])
def test_damaged_bundle_is_refused(bundle, damage):
    vdir = bundle / "versions" / "v000001"
    target = vdir / "classifier.onnx"
    if damage == "edit":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        exc, match = BundleIntegrityError, "classifier.onnx"
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:1000])
        exc, match = BundleIntegrityError, "classifier.onnx"
    elif damage == "delete":
        (vdir / "learner" / "state.json").unlink()  # not hashed at a serving open, but every listed file must exist
        exc, match = BundleMissingFileError, "state.json"
    else:
        manifest = json.loads((vdir / "manifest.json").read_text())
        manifest["format_version"] = 42
        (vdir / "manifest.json").write_text(json.dumps(manifest))
        exc, match = BundleVersionError, "42"
    before = {p: p.stat().st_mtime_ns for p in bundle.rglob("*")}
    with pytest.raises(exc, match=match):
        runtime.open(bundle)
    assert {p: p.stat().st_mtime_ns for p in bundle.rglob("*")} == before


def test_no_bundle_here(tmp_path):
    with pytest.raises(BundleError, match="holds no bundle"):
        runtime.open(tmp_path)


def test_local_update_rollback_and_history(bundle):
    dev = runtime.open(bundle, budget=FAST, quality=UNGATED)
    x2, y2 = make_task([5, 6], seed=3)
    report = dev.learn_new_classes((nhwc(x2), y2), class_names={5: "five", 6: "six"})
    assert report.version == "v000002" and report.parent_version == "v000001"
    assert dev.version == "v000002" and dev.class_names == ["zero", "one", "five", "six"]
    assert report.seconds_total > 0 and report.peak_rss_mb > 0 and report.bundle_mb > 0
    assert not report.stopped_early
    hist = dev.history()
    assert [h["version"] for h in hist] == ["v000001", "v000002"]
    assert hist[1]["labels_added"] == [5, 6] and hist[1]["current"] and "train_accuracy" in hist[1]
    # a second runtime opened on the same directory sees the new version
    assert runtime.open(bundle).version == "v000002"
    assert dev.rollback() == "v000001"
    assert dev.class_names == ["zero", "one"] and runtime.open(bundle).version == "v000001"


def test_time_budget_stops_early_and_says_so(bundle):
    dev = runtime.open(bundle, quality=UNGATED)
    budget = runtime.DeviceBudget(epochs=50, dream_iterations=1000, time_budget_s=0.5)
    report = dev.learn_new_classes(make_task([5, 6], seed=3), budget=budget)
    assert report.stopped_early and report.seconds_train < 5
    assert report.learn["dream_iterations"] < 1000


def test_update_lock_refuses_second_writer(bundle):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom abd_edge.bundle_store import BundleStore\n"
         f"with BundleStore({str(bundle)!r}).lock():\n    print('locked', flush=True)\n    time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        dev = runtime.open(bundle, budget=FAST, lock_timeout_s=0.2)
        with pytest.raises(BundleLockedError, match="another process"):
            dev.learn_new_classes(make_task([5, 6], seed=3))
        assert dev.version == "v000001" and runtime.open(bundle).version == "v000001"
    finally:
        holder.kill()
        holder.wait()


CHILD = """
import sys
from abd_edge import runtime
sys.path.insert(0, {tests!r})
from conftest import make_task
from abd_edge.export.quality import QualityGate
dev = runtime.open({bundle!r}, budget=runtime.DeviceBudget(epochs=1, dream_iterations=2), quality=QualityGate(enabled=False))
dev.learn_new_classes(make_task([5, 6], seed=3))
print("finished", dev.version)
"""


@pytest.mark.parametrize("point, expected", [
    ("update_trained", "v000001"),    # killed after training, before any export
    ("export_mid_write", "v000001"),  # killed while an ONNX file is half written
    ("staged", "v000001"),            # all files written, before the version is renamed into place
    ("renamed", "v000001"),           # renamed, before CURRENT is switched
    ("switched", "v000002"),          # CURRENT switched, before old versions are pruned
])
def test_sigkill_mid_update_leaves_a_valid_bundle(bundle, point, expected):
    env = dict(os.environ, ABD_EDGE_FAULT_POINT=point)
    res = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(REPO / "tests"), bundle=str(bundle))],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    dev = runtime.open(bundle, budget=FAST, quality=UNGATED)  # verifies every hash of the current version
    assert dev.version == expected
    # the next update cleans up whatever the killed one left and commits normally
    report = dev.learn_new_classes(make_task([7, 8], seed=4))
    assert report.parent_version == expected
    assert runtime.open(bundle).version == report.version


def test_raw_local_data_never_touches_disk(bundle, tmp_path, monkeypatch):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    x, y = make_task([5, 6], n_per_class=10, seed=11)
    dev = runtime.open(bundle, budget=FAST, quality=UNGATED)
    dev.learn_new_classes((nhwc(x), y))
    from abd_edge.privacy.audit import persistence_scan

    written = [p for root in (bundle, tmp) for p in root.rglob("*") if p.is_file()]
    assert written
    assert persistence_scan([bundle, tmp], x) == []
