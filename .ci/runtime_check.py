"""CI helper (run in a venv WITHOUT torch): open, predict, history, rollback on a bundle.

    RUNTIME_VENV/bin/python .ci/runtime_check.py OUT_DIR
"""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

assert importlib.util.find_spec("torch") is None, "this check must run where torch is not installed"
t0 = time.perf_counter()
from abd_edge import runtime  # noqa: E402
from abd_edge.errors import MissingDependencyError  # noqa: E402

import_s = time.perf_counter() - t0
out = Path(sys.argv[1])
frames = np.load(out / "frames.npy")
t0 = time.perf_counter()
device = runtime.open(out / "bundle")
open_s = time.perf_counter() - t0
assert device.version == "v000002" and device.num_classes == 4, (device.version, device.num_classes)
pred = device.predict(frames)
assert pred.indices.shape == (len(frames),) and set(pred.names) <= {"zero", "one", "two", "three"}
history = device.history()
assert [h["version"] for h in history] == ["v000001", "v000002"], history
assert device.rollback() == "v000001" and device.num_classes == 2
assert runtime.open(out / "bundle", int8=True).predict(frames).indices.shape == (len(frames),)
try:  # a torch feature on a runtime-only install names its extra
    device.learn_new_classes((frames, [2] * len(frames)))
except MissingDependencyError as e:
    assert "abd-edge[train]" in str(e), e
else:
    raise AssertionError("learn_new_classes ran without torch")
try:  # the default bundle carries the generator once, as learner weights: dreaming needs torch too
    device.dream(2)
except MissingDependencyError as e:
    assert "abd-edge[train]" in str(e), e
else:
    raise AssertionError("dream ran without torch on a bundle without generator.onnx")
assert "torch" not in sys.modules
import onnxruntime  # noqa: E402

print(f"runtime-only OK with onnxruntime {onnxruntime.__version__}: import {import_s * 1e3:.0f} ms, open {open_s * 1e3:.0f} ms, "
      f"predicted {pred.names[:4]}, history {[h['version'] for h in history]}, rolled back to v000001")
