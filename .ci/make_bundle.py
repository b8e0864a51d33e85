"""CI helper (run in the full test venv): write a small two-version bundle for the runtime-only check.

    .venv/bin/python .ci/make_bundle.py OUT_DIR

OUT_DIR/bundle: v000001 from a tiny server learner (classes 0, 1), v000002 from a
device update (classes 2, 3); OUT_DIR/frames.npy: uint8 NHWC images to predict on.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_task, tiny_config  # noqa: E402

from abd_edge import Learner, runtime  # noqa: E402
from abd_edge.export import export_bundle  # noqa: E402
from abd_edge.export.quality import QualityGate  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
learner = Learner(tiny_config("abd"))
x, y = make_task([0, 1])
learner.learn_new_classes((x, y), class_names={0: "zero", 1: "one"})
export_bundle(learner, out / "bundle", quantize="int8")
x2, y2 = make_task([2, 3], seed=1)
frames = np.ascontiguousarray(x2.permute(0, 2, 3, 1).numpy())
# A 1-epoch update of a tiny learner: the quality gate would rightly refuse it; this bundle only has to exist.
device = runtime.open(out / "bundle", budget=runtime.DeviceBudget(epochs=1, dream_iterations=2), quality=QualityGate(enabled=False))
device.learn_new_classes((frames, y2), class_names={2: "two", 3: "three"})
np.save(out / "frames.npy", frames[:8])
print("bundle versions:", [h["version"] for h in device.history()])
