"""The typed bundle manifest: migration from format 1, field errors, and hashing each file once."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from abd_edge import bundle_format, runtime
from abd_edge.bundle_schema import FORMAT_VERSION, TENSORS, Manifest, migrate
from abd_edge.errors import BundleIntegrityError, BundleVersionError, ManifestFieldError
from abd_edge.export import export_bundle
from conftest import fitted_learner, rewrite_manifest

#: A bundle manifest exactly as format 1 (abd-edge 0.1.0 before the typed schema) wrote it.
V1_MANIFEST = {
    "format": "abd-edge", "format_version": 1, "kind": "bundle", "version": "v000002", "parent_version": "v000001",
    "created": "2026-11-27T12:00:00+00:00", "abd_edge_version": "0.1.0",
    "files": {
        "classifier.onnx": {"sha256": "a" * 64, "bytes": 2000},
        "classifier.int8.onnx": {"sha256": "b" * 64, "bytes": 600},
        "generator.onnx": {"sha256": "c" * 64, "bytes": 9000},
        "learner/weights.safetensors": {"sha256": "d" * 64, "bytes": 5000},
        "learner/state.json": {"sha256": "e" * 64, "bytes": 300},
    },
    "classes": [{"index": 1, "label": "cat", "name": "Cat"}, {"index": 0, "label": 3, "name": "three"}],
    "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "shape": [None, 32, 32, 3],
              "normalization": "inside the graph: x / 255, then (x - mean) / std per channel"},
    "outputs": {"logits": "float32 (N, classes)", "probabilities": "float32 (N, classes), softmax of logits"},
    "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "opset": 18, "ir_version": 8, "min_onnxruntime": "1.14",
    "generator": {"zdim": 1000, "output": "float32 (N, C, H, W), normalised input space"},  # early v1: no "onnx"
    "learner": {"method": "abd", "tasks_learned": 2, "config": {}, "history": []},
    "privacy": {"ledger": [{"task": 0, "epsilon": "inf"}]},
    "parity": {"classifier": {"max_abs_diff": 1e-6}},
    "quantization": {"path": "/tmp/.staging-x/classifier.int8.onnx", "included": True},
    "summary": {"update": "export", "n_classes": 2},
}


def test_a_format_1_manifest_is_migrated_and_typed():
    before = copy.deepcopy(V1_MANIFEST)
    m = Manifest.from_dict(V1_MANIFEST)
    assert V1_MANIFEST == before  # the raw dict (what the digest and signature cover) is untouched
    assert m.format_version == FORMAT_VERSION == 2
    assert m.labels == (3, "cat") and m.class_names == ("three", "Cat")  # sorted by index
    assert m.input.shape == (32, 32, 3) and m.mean == (0.5, 0.5, 0.5) and m.std == (0.25, 0.25, 0.25)
    assert m.tensors.classifier_input == "pixels"  # v1's input.name moved into the tensor table
    assert m.tensors.logits == "logits" and m.tensors.generator_input == "z"
    assert m.generator.zdim == 1000 and m.generator.onnx  # derived from the files table
    assert not m.serve_only and m.learner_files() == ["learner/weights.safetensors", "learner/state.json"]
    assert "path" not in m.quantization and m.privacy_ledger == [{"task": 0, "epsilon": "inf"}]
    assert m.files["classifier.onnx"].bytes == 2000 and m.min_onnxruntime == "1.14"
    again = Manifest.from_dict(m.to_dict())  # v2 round trip
    assert again == m and again.to_dict() == m.to_dict()


def test_format_1_serving_only_manifest_migrates_to_serve_only():
    v1 = {k: v for k, v in V1_MANIFEST.items() if k not in ("generator", "learner")}
    v1["files"] = {"classifier.onnx": V1_MANIFEST["files"]["classifier.onnx"]}
    m = Manifest.from_dict(v1)
    assert m.serve_only and m.generator is None and m.learner is None


@pytest.mark.parametrize("edit, field, expected", [
    (lambda d: d["input"].__setitem__("shape", [None, 32, 0, 3]), "input.shape", "positive ints"),
    (lambda d: d["input"].__setitem__("dtype", "float32"), "input.dtype", "uint8"),
    (lambda d: d["normalization"].__setitem__("std", [0.2, 0.0, 0.2]), "normalization.std", "positive"),
    (lambda d: d["normalization"].pop("mean"), "normalization.mean", "3 finite numbers"),
    (lambda d: d["normalization"].__setitem__("mean", [10**400, 0, 0]), "normalization.mean", "3 finite numbers"),
    (lambda d: d["classes"][1].__setitem__("label", True), "classes[1].label", "an int or a string"),
    (lambda d: d["classes"][1].__setitem__("index", 0), "classes[].index", "0..1"),
    (lambda d: d["generator"].__setitem__("zdim", "big"), "generator.zdim", "an int >= 1"),
    (lambda d: d["files"].pop("generator.onnx"), "generator.onnx", "generator.onnx is listed"),
    (lambda d: d.__setitem__("serve_only", "no"), "serve_only", "true or false"),
    (lambda d: d["tensors"].pop("logits"), "tensors.logits", "tensor name"),
])
def test_bad_fields_name_the_field_and_what_was_expected(edit, field, expected):
    doc = Manifest.from_dict(V1_MANIFEST).to_dict()
    edit(doc)
    with pytest.raises(ManifestFieldError) as e:
        Manifest.from_dict(doc, "the manifest of v000002")
    assert e.value.field == field and expected in e.value.expected
    assert str(e.value).startswith("the manifest of v000002: field") and isinstance(e.value, BundleIntegrityError)


def test_unknown_format_versions_are_refused():
    for bad in (0, 3, "2", True, None):
        with pytest.raises(BundleVersionError):
            migrate({**V1_MANIFEST, "format_version": bad})


# ----------------------------------------------------------------- on disk


@pytest.fixture(scope="module")
def learned():
    return fitted_learner("abd")


def _name(path: str) -> str:
    """A hashed path as its name inside the version ('learner/...' also while the learner is being staged)."""
    p = Path(path)
    if p.parent.name == "learner" or p.parent.name.startswith(".learner.tmp-"):
        return f"learner/{p.name}"
    return p.name


def test_each_file_is_hashed_once_at_export_and_only_what_serving_loads_at_open(tmp_path, learned, monkeypatch):
    calls: Counter[str] = Counter()
    real = bundle_format.sha256_file
    monkeypatch.setattr(bundle_format, "sha256_file", lambda p, *a, **k: (calls.update([_name(p)]), real(p, *a, **k))[1])
    info = export_bundle(learned[0], tmp_path / "b", quantize="int8")
    files = set(info["files"])
    assert {"classifier.onnx", "learner/weights.safetensors", "learner/state.json", "learner/manifest.json"} <= files
    assert calls == Counter({name: 1 for name in files})  # once each at export, the learner's weights included

    calls.clear()
    dev = runtime.open(tmp_path / "b")
    dev.predict(np.zeros((2, 8, 8, 1), np.uint8))
    assert calls == Counter({"classifier.onnx": 1})  # a serving open hashes what it serves with, nothing else
    calls.clear()
    runtime.open(tmp_path / "b", int8=True)
    assert calls == Counter({"classifier.int8.onnx": 1})

    calls.clear()
    dev.dream(2)  # needs the generator: the learner state is verified on first use, once
    dev.dream(2)
    assert calls == Counter({name: 1 for name in files if name.startswith("learner/")})


def test_learner_state_is_verified_when_first_needed(tmp_path, learned):
    export_bundle(learned[0], tmp_path / "b")
    weights = tmp_path / "b" / "versions" / "v000001" / "learner" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a hash notices
    weights.write_bytes(bytes(data))
    dev = runtime.open(tmp_path / "b")  # serving does not read it
    assert dev.predict(np.zeros((1, 8, 8, 1), np.uint8)).indices.shape == (1,)
    with pytest.raises(BundleIntegrityError, match="weights.safetensors"):
        dev.dream(2)


def test_a_bundle_written_in_format_1_still_opens(tmp_path, learned):
    """Today's bundles on disk: rewrite a fresh manifest the way format 1 wrote it (digest matching)."""
    export_bundle(learned[0], tmp_path / "b", generator_onnx=True)
    vdir = tmp_path / "b" / "versions" / "v000001"
    m = json.loads((vdir / "manifest.json").read_text())
    v1 = {k: v for k, v in m.items() if k not in ("tensors", "serve_only")}
    v1["format_version"] = 1
    v1["input"] = {**m["input"], "name": TENSORS.classifier_input, "normalization": m["normalization"]["applied"]}
    v1["normalization"] = {"mean": m["normalization"]["mean"], "std": m["normalization"]["std"]}
    v1["outputs"] = {"logits": "float32 (N, classes)", "probabilities": "softmax of logits"}
    v1["generator"] = {"zdim": m["generator"]["zdim"], "output": "float32 (N, C, H, W)"}
    rewrite_manifest(vdir, v1)
    dev = runtime.open(tmp_path / "b")
    assert dev.manifest.format_version == 2 and dev.manifest.generator.onnx and dev.class_names == ["zero", "one"]
    assert dev.predict(np.zeros((2, 8, 8, 1), np.uint8)).probabilities.shape == (2, 2)
    assert dev.dream(2)[0].shape == (2, 8, 8, 1)
    assert json.loads((vdir / "manifest.json").read_text())["format_version"] == 1  # read, never rewritten


def test_export_shows_a_bar_over_its_stages(tmp_path, learned, monkeypatch, capsys):
    monkeypatch.setenv("ABD_EDGE_PROGRESS", "1")  # as if a terminal or a notebook watched
    export_bundle(learned[0], tmp_path / "s", serve_only=True)
    err = capsys.readouterr().err
    assert "export" in err and "/3 " in err and "classifier ONNX" in err and "manifest + commit" in err
    monkeypatch.setenv("ABD_EDGE_PROGRESS", "0")
    export_bundle(learned[0], tmp_path / "s", serve_only=True, show_progress=True)
    assert "export" not in capsys.readouterr().err  # nobody watching: no bar
