"""Quickstart: train on a server, export a bundle, predict and learn new classes on a device.

Runs on the embedded scikit-learn digits (8x8 grey) in about a minute on 2 CPU cores:

    python examples/quickstart.py
"""

import numpy as np

from abd_edge import Learner, LearnerConfig, runtime
from abd_edge.data import load_digits
from abd_edge.export import export_bundle

train, test = load_digits(train=True), load_digits(train=False)  # float images in [0, 1], labels 0..9


def pixels(images):
    """What a device camera gives: uint8 NHWC."""
    return np.ascontiguousarray((images * 255).round().byte().permute(0, 2, 3, 1).numpy())


# 1. Server: learn digits 0-4 with ABD (a short budget; LearnerConfig() is the paper's full recipe).
# Crop padding, flips, batch sizes and clipping are settled from the 8x8 grey images by the learner
# itself (report.data_settings shows what it chose).
config = LearnerConfig.short_budget(epochs=8, dream_iterations=40, max_classes=10)
learner = Learner(config)
base = train.select_labels([0, 1, 2, 3, 4])
report = learner.learn_new_classes((base.images, base.labels), class_names=["zero", "one", "two", "three", "four"])
print(f"server: learned {report.names_added} in {report.train_seconds:.0f}s, dreamed for {report.dream_seconds:.0f}s")

# 2. Export: classifier.onnx (uint8 NHWC in), the learner's state (the generator included), a manifest of hashes.
info = export_bundle(learner, "quickstart-bundle")
print(f"bundle {info['version']}: {info['bytes'] / 2**20:.1f} MB, parity {info['parity']['classifier']['max_abs_diff']:.1e}")

# 3. Device: open (verifies what it serves; the rest on first use), predict with ONNX Runtime, learn 5-9 locally with dreamed replay.
device = runtime.open("quickstart-bundle", budget=runtime.DeviceBudget(epochs=8, dream_iterations=40))
seen = test.select_labels([0, 1, 2, 3, 4])
print("device accuracy on 0-4:", device.evaluate(pixels(seen.images), seen.labels))
local = train.select_labels([5, 6, 7, 8, 9])  # stays in memory; never written anywhere
update = device.learn_new_classes((pixels(local.images), local.labels))
print(f"update -> {update.version} in {update.seconds_total:.0f}s (peak {update.peak_rss_mb:.0f} MB)")
print("device accuracy on 0-9:", device.evaluate(pixels(test.images), test.labels))
print("prediction for the first test image:", device.predict(pixels(test.images[:1])).names)
print("history:", [(h["version"], h.get("n_classes")) for h in device.history()])
device.rollback()  # back to the server's version if the update misbehaves
print("after rollback:", device.version, device.class_names)
