"""Bundles that old runtimes read: the lowest IR version, the minimum ONNX Runtime, metadata, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from abd_edge import runtime
from abd_edge.errors import BundleError
from abd_edge.export import export_bundle, read_metadata
from abd_edge.onnx_compat import check_onnxruntime, min_onnxruntime_for, parse_version
from abd_edge.export.quality import QualityGate
from conftest import fitted_learner, make_task, rewrite_manifest


@pytest.fixture(scope="module")
def learned():
    return fitted_learner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, learned):
    root = tmp_path_factory.mktemp("compat")
    learner = learned[0]
    info = export_bundle(learner, root / "b", quantize="int8", generator_onnx=True)  # all three ONNX files
    return root / "b", info


def test_table_lookups():
    assert min_onnxruntime_for(8, {"ai.onnx": 18}) == "1.14"
    assert min_onnxruntime_for(10, {"ai.onnx": 18}) == "1.18"  # what an IR-10 file of opset 18 needed
    assert min_onnxruntime_for(9, {"": 20}) == "1.17"
    assert parse_version("1.17.3+cu118") == (1, 17, 3) and parse_version("1.20.0.dev2024") == (1, 20, 0)
    with pytest.raises(ValueError, match="newer than any"):
        min_onnxruntime_for(12, {"ai.onnx": 30})


def test_files_use_the_lowest_ir_and_carry_metadata(exported):
    path, info = exported
    vdir = path / "versions" / info["version"]
    manifest = info["manifest"]
    assert manifest["min_onnxruntime"] == "1.14" and manifest["ir_version"] == 8
    for name in ("classifier.onnx", "generator.onnx", "classifier.int8.onnx"):
        model = onnx.load(str(vdir / name), load_external_data=False)
        assert model.ir_version == 8, name
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}, name
    meta = read_metadata(vdir / "classifier.onnx")
    assert meta["labels"] == [0, 1] and meta["class_names"] == ["zero", "one"]
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["dtype"] == "uint8"
    assert len(meta["normalization"]["mean"]) == 1
    assert read_metadata(vdir / "classifier.int8.onnx")["class_names"] == ["zero", "one"]


def test_int8_calibrated_on_dreams_and_no_staging_path(exported):
    _, info = exported
    q = info["manifest"]["quantization"]
    assert q["calibration"] == "dreamed images only" and q["included"] is True
    assert "path" not in q and ".staging" not in json.dumps(info["manifest"])


def test_int8_below_threshold_is_left_out(tmp_path, monkeypatch, learned):
    import abd_edge.export.quantize as quantize

    monkeypatch.setattr(quantize, "INT8_MIN_AGREEMENT", 1.01)  # nothing can reach it
    learner = learned[0]
    info = export_bundle(learner, tmp_path / "b", quantize="int8")
    q = info["manifest"]["quantization"]
    assert q["included"] is False and "below the 101% required" in q["warning"]
    assert "classifier.int8.onnx" not in info["files"]
    with pytest.raises(BundleError, match="no classifier.int8.onnx .int8 classifier left out: its top-1"):
        runtime.open(tmp_path / "b", int8=True)


def test_runtime_checks_the_minimum_version(exported, tmp_path):
    with pytest.raises(BundleError, match=r"needs ONNX Runtime >= 1\.18, but 1\.15\.1 is installed"):
        check_onnxruntime("1.18", "bundle version v000001", installed="1.15.1")
    check_onnxruntime("1.14", "x", installed="1.15.1")
    import shutil

    path, info = exported
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    vdir = copy / "versions" / info["version"]
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["min_onnxruntime"] = "99.0"
    rewrite_manifest(vdir, manifest)
    with pytest.raises(BundleError, match=r"needs ONNX Runtime >= 99\.0"):
        runtime.open(copy)


def test_ort_load_failure_becomes_bundle_error(exported, tmp_path):
    """A file ORT cannot parse (here: garbage with a matching manifest) is a BundleError, not ORT's own type."""
    import hashlib
    import shutil

    path, info = exported
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    vdir = copy / "versions" / info["version"]
    junk = b"not an onnx model" * 10
    (vdir / "classifier.onnx").write_bytes(junk)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["classifier.onnx"] = {"bytes": len(junk), "sha256": hashlib.sha256(junk).hexdigest()}
    rewrite_manifest(vdir, manifest)
    with pytest.raises(BundleError, match="ONNX Runtime .* cannot load classifier.onnx"):
        runtime.open(copy)
    dev = runtime.open(path)
    assert dev.predict(np.zeros((1, 8, 8, 1), np.uint8)).indices.shape == (1,)


def test_serve_only_bundle_predicts_and_refuses_updates(tmp_path, learned):
    learner, x, _ = learned
    info = export_bundle(learner, tmp_path / "s", quantize="int8", serve_only=True)
    assert sorted(info["files"]) == ["classifier.int8.onnx", "classifier.onnx"] and info["manifest"]["serve_only"]
    dev = runtime.open(tmp_path / "s", budget=runtime.DeviceBudget(epochs=1, dream_iterations=1))
    frames = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(dev.predict(frames).indices, learner.predict(x).indices.numpy())
    with pytest.raises(BundleError, match="serving-only"):
        dev.learn_new_classes(make_task([2, 3]))
    assert dev.store.versions() == ["v000001"]


def test_updatable_bundle_leaves_adam_state_out_unless_asked(tmp_path, learned, exported):
    from safetensors import safe_open

    def has_adam(version_dir):
        with safe_open(str(version_dir / "learner" / "weights.safetensors"), "pt") as f:
            return any(k.startswith("generator_opt.") for k in f.keys())

    assert learned[0].config.dream.keep_optimizer  # the learner itself keeps it ...
    path, info = exported
    assert not has_adam(path / "versions" / info["version"])  # ... a bundle by default does not
    export_bundle(learned[0], tmp_path / "keep", keep_optimizer=True)
    assert has_adam(tmp_path / "keep" / "versions" / "v000001")


def test_generator_onnx_only_when_asked(exported):
    path, info = exported  # exported with generator_onnx=True
    assert "generator.onnx" in info["files"] and info["parity"]["generator"]["max_abs_diff"] <= 1e-4
    dev = runtime.open(path)
    assert dev.manifest.generator.onnx and dev.dream(2)[0].shape == (2, 8, 8, 1)  # through ONNX Runtime


def test_generator_once_by_default(tmp_path, learned):
    learner = learned[0]
    info = export_bundle(learner, tmp_path / "g")
    assert "generator.onnx" not in info["files"] and info["manifest"]["generator"]["onnx"] is False
    dev = runtime.open(tmp_path / "g", budget=runtime.DeviceBudget(epochs=1, dream_iterations=1),
                       quality=QualityGate(enabled=False))  # judged here: the bundle's shape, not the tiny update
    pixels, labels = dev.dream(3)
    assert pixels.shape == (3, 8, 8, 1) and pixels.dtype == np.uint8 and labels.shape == (3,)
    rep = dev.learn_new_classes(make_task([2, 3], seed=5))
    assert dev.num_classes == 4 and not dev.manifest.has("generator.onnx"), rep.version
