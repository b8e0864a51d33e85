"""Re-exporting only the classifier's head when an update kept the backbone (export/onnx_export.py)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from abd_edge.bundle_store import BundleStore
from abd_edge.export import export_bundle
from abd_edge.export.local_update import update_bundle
from abd_edge.export.onnx_export import export_classifier, reexport_classifier_head
from abd_edge.export.quality import QualityGate
from abd_edge.privacy import PrivacyConfig
from abd_edge.runtime import DeviceBudget
from conftest import fitted_learner, make_task


def _run(path, images):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images})


def test_the_head_rewrite_equals_a_full_export(tmp_path):
    learner, _, _ = fitted_learner()
    shape = learner.input_shape
    export_classifier(learner.model, learner.normalizer, 2, shape, tmp_path / "v1.onnx")
    with torch.no_grad():  # two new classes' rows, as a class-mean head would set them
        head = learner.model.get_classifier()
        head.weight[2:4] = torch.randn(2, head.weight.shape[1], generator=torch.Generator().manual_seed(0))
        head.bias[2:4] = torch.tensor([0.3, -0.2])
    labels = {"labels": [0, 1, 2, 3], "class_names": ["zero", "one", "two", "three"]}
    info = reexport_classifier_head(tmp_path / "v1.onnx", learner.model, learner.normalizer, 4, shape,
                                    tmp_path / "head.onnx", metadata=labels)
    assert info is not None and info["reexport"] == "head" and info["n_classes"] == 4
    export_classifier(learner.model, learner.normalizer, 4, shape, tmp_path / "full.onnx", metadata=labels)
    c, h, w = shape
    images = np.random.default_rng(0).integers(0, 256, (7, h, w, c), dtype=np.uint8)
    for got, want in zip(_run(tmp_path / "head.onnx", images), _run(tmp_path / "full.onnx", images)):
        assert got.shape == want.shape == (7, 4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "head.onnx")).metadata_props}
    full = {p.key: p.value for p in onnx.load(str(tmp_path / "full.onnx")).metadata_props}
    assert {k: v for k, v in props.items() if "export" not in k} == {k: v for k, v in full.items() if "export" not in k}
    assert [d.dim_value for d in onnx.load(str(tmp_path / "head.onnx")).graph.output[0].type.tensor_type.shape.dim][1:] == [4]

    # a second update rewrites the rewritten file: one more class
    with torch.no_grad():
        head.weight[4] = 0.5
        head.bias[4] = 0.1
    again = reexport_classifier_head(tmp_path / "head.onnx", learner.model, learner.normalizer, 5, shape,
                                     tmp_path / "head2.onnx")
    assert again is not None
    export_classifier(learner.model, learner.normalizer, 5, shape, tmp_path / "full2.onnx")
    for got, want in zip(_run(tmp_path / "head2.onnx", images), _run(tmp_path / "full2.onnx", images)):
        assert got.shape == (7, 5)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_file_without_the_expected_head_is_left_to_the_full_export(tmp_path):
    learner, _, _ = fitted_learner()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["logits"])], "other",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 2])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "other.onnx"))
    out = tmp_path / "new.onnx"
    assert reexport_classifier_head(tmp_path / "other.onnx", learner.model, learner.normalizer, 2,
                                    learner.input_shape, out) is None
    assert not out.exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    learner, _, _ = fitted_learner()
    path = tmp_path_factory.mktemp("hb") / "bundle"
    export_bundle(learner, path, show_progress=False)
    return path


@pytest.mark.parametrize("budget,expected", [
    (DeviceBudget(epochs=1, dream_iterations=0, privacy=PrivacyConfig(target_epsilon=math.inf)), "head"),
    (DeviceBudget(epochs=1, dream_iterations=2), "full"),  # ABD trains the backbone
])
def test_an_update_rewrites_the_head_only_when_the_backbone_is_unchanged(bundle, tmp_path, budget, expected):
    shutil.copytree(bundle, tmp_path / "b")
    store = BundleStore(tmp_path / "b")
    upd = update_bundle(store, make_task([2, 3], seed=1), {2: "two", 3: "three"}, budget=budget,
                        gate=QualityGate(enabled=False))
    assert upd.export["classifier_export"] == expected
    # committed, so the parity check (which raises on a mismatch) accepted the file against the updated model
    _, manifest = store.read()  # hashes verified; the new file is what the manifest says
    assert [c["name"] for c in manifest["classes"]] == ["zero", "one", "two", "three"]
    logits, probs = _run(store.version_dir(upd.version) / "classifier.onnx", np.zeros((2, 8, 8, 1), dtype=np.uint8))
    assert logits.shape == probs.shape == (2, 4)
