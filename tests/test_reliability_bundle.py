"""Issue 8: integrity holes, symlinks, manifest/model disagreement, the predict-vs-rollback race, divergence, threads.

Each test failed on the code before the fix (defects 3, 4, 5, 6, 7 and 10
of issue 8). "Re-hashed" edits recompute every hash and the manifest digest,
as a careless integrator with a script would: they must still be refused
when the manifest disagrees with the model, or when a file is read that the
manifest does not list.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from abd_edge import Learner, runtime
from abd_edge.bundle_format import MANIFEST, MANIFEST_DIGEST, file_entries, manifest_digest
from abd_edge.errors import AbdEdgeError, BundleError, BundleIntegrityError, TrainingDivergedError
from conftest import make_task, tiny_config
from reliability_fixtures import two_version_bundle


def rehash(directory: Path, edit=None) -> None:
    """Apply ``edit`` to the manifest, recompute every listed file's hash and the manifest digest."""
    manifest = json.loads((directory / MANIFEST).read_text())
    if edit is not None:
        edit(manifest)
    if isinstance(manifest.get("files"), dict):
        present = {n for n in manifest["files"] if (directory / n).is_file()}
        manifest["files"].update(file_entries(directory, present))
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (directory / MANIFEST_DIGEST).write_text(manifest_digest(manifest) + "\n")


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(two_version_bundle(), path, symlinks=True)
    return path


def v2(bundle: Path) -> Path:
    return bundle / "versions" / "v000002"


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------ defect 4: manifest vs model


def test_rehashed_class_table_one_entry_short_is_refused_at_open(bundle):
    rehash(v2(bundle), lambda m: m.__setitem__("classes", m["classes"][:1]))
    with pytest.raises(BundleIntegrityError, match="lists 1 classes, but classifier.onnx outputs 4"):
        runtime.open(bundle)


def test_rehashed_input_shape_that_is_not_the_models_is_refused_at_open(bundle):
    rehash(v2(bundle), lambda m: m["input"].__setitem__("shape", [None, 16, 16, 1]))
    with pytest.raises(BundleIntegrityError, match=r"input shape \(N, 16, 16, 1\)"):
        runtime.open(bundle)


@pytest.mark.parametrize("edit", [
    lambda m: m["classes"][0].__setitem__("index", 7),
    lambda m: m["classes"][0].__setitem__("label", [1]),
    lambda m: m.__setitem__("classes", "zero,one"),
    lambda m: m["input"].__setitem__("shape", [None, 8, "8", 1]),
    lambda m: m["classes"][1].__setitem__("label", 0),
    lambda m: m["input"].__setitem__("dtype", "float32"),
])
def test_rehashed_garbage_tables_are_refused_with_a_bundle_error(bundle, edit):
    rehash(v2(bundle), edit)
    with pytest.raises(BundleIntegrityError, match="v000002"):
        runtime.open(bundle)


# ------------------------------------------------------------------ defect 6: integrity holes


def test_a_class_name_edited_in_the_manifest_is_refused(bundle):
    path = v2(bundle) / MANIFEST
    path.write_text(path.read_text().replace('"five"', '"cat"'))
    with pytest.raises(BundleIntegrityError, match="does not match its digest"):
        runtime.open(bundle)


def test_an_unlisted_generator_replaced_by_random_bytes_is_refused(bundle):
    (v2(bundle) / "generator.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    rehash(v2(bundle))
    with pytest.raises(BundleIntegrityError, match=r"does not list: \['generator.onnx'\]"):
        runtime.open(bundle)


def test_learner_weights_removed_from_its_manifest_are_refused(bundle, tmp_path):
    d = tmp_path / "l"
    shutil.copytree(v2(bundle) / "learner", d)
    w = d / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    rehash(d, lambda m: m["files"].pop("weights.safetensors"))
    with pytest.raises(BundleIntegrityError, match="weights.safetensors is read but not listed"):
        Learner.load(d)


def test_learner_with_empty_files_table_and_edited_names_is_refused(bundle, tmp_path):
    d = tmp_path / "l"
    shutil.copytree(v2(bundle) / "learner", d)
    (d / "state.json").write_text((d / "state.json").read_text().replace('"five"', '"cat"'))
    rehash(d, lambda m: m.__setitem__("files", {}))
    with pytest.raises(BundleIntegrityError, match="not listed"):
        Learner.load(d)


@pytest.mark.parametrize("field, value", [("tasks_learned", "x"), ("history", ["x"]), ("input_shape", [1, 8]),
                                          ("registry", "x"), ("head_capacity", 1)])
def test_rehashed_learner_state_edits_raise_bundle_errors(bundle, tmp_path, field, value):
    d = tmp_path / "l"
    shutil.copytree(v2(bundle) / "learner", d)
    state = json.loads((d / "state.json").read_text())
    state[field] = value
    (d / "state.json").write_text(json.dumps(state))
    rehash(d)
    with pytest.raises(BundleError, match="learner state"):
        Learner.load(d)


# ------------------------------------------------------------------ defect 7: symlinks


def test_symlinked_files_and_directories_inside_a_bundle_are_refused(bundle, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(v2(bundle), outside)
    cases = [
        v2(bundle) / "classifier.onnx",
        v2(bundle) / "learner",
        bundle / "versions" / "v000002",
    ]
    for link in cases:
        saved = tmp_path / "saved"
        shutil.copytree(bundle, saved)
        target = outside / link.relative_to(v2(bundle)) if link != v2(bundle) else outside
        if link.is_dir():
            shutil.rmtree(link)
        else:
            link.unlink()
        link.symlink_to(target)
        with pytest.raises(BundleIntegrityError, match="symlink"):
            runtime.open(bundle)
        shutil.rmtree(bundle)
        shutil.move(saved, bundle)


# ------------------------------------------------------------------ defect 3: the race


def test_predict_never_mixes_versions_while_another_thread_rolls_back(bundle):
    dev = runtime.open(bundle)
    classes = {"v000001": [0, 1], "v000002": [0, 1, 5, 6]}
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    stop = threading.Event()
    errors: list[str] = []
    calls = [0]

    def reader():
        while not stop.is_set():
            try:
                p = dev.predict(x)
                assert p.probabilities.shape[1] == len(classes[p.version]), p.version
                assert set(p.labels) <= set(classes[p.version])
                calls[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    switches = 0
    deadline = time.monotonic() + 30
    while (switches < 8 or calls[0] < 40) and time.monotonic() < deadline:
        dev.rollback("v000001" if dev.version == "v000002" else "v000002")
        switches += 1
    stop.set()
    for t in threads:
        t.join()
    assert switches >= 5 and calls[0] >= 20
    assert errors == []


# ------------------------------------------------------------------ defect 5: divergence


def test_divergence_raises_an_abd_edge_error_and_changes_nothing():
    from abd_edge import TrainConfig

    learner = Learner(tiny_config("finetune", first_task=TrainConfig(epochs=1, lr=1e38, batch_size=16, schedule="cosine", milestones=())))
    with pytest.raises(TrainingDivergedError, match="diverged") as info:
        learner.learn_new_classes(make_task([0, 1]), show_progress=False)
    assert isinstance(info.value, AbdEdgeError) and isinstance(info.value, FloatingPointError)
    assert learner.tasks_learned == 0 and learner.num_classes == 0


# ------------------------------------------------------------------ defect 10: num_threads


def test_num_threads_is_applied_during_a_call_and_restored_after(monkeypatch):
    import abd_edge.learner as learner_mod

    seen = []
    real = learner_mod.train_task

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(learner_mod, "train_task", spy)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    learner = Learner(tiny_config("finetune", num_threads=wanted))
    learner.learn_new_classes(make_task([0, 1], n_per_class=4), show_progress=False)
    assert seen == [wanted] and torch.get_num_threads() == before


def test_manifest_digest_is_of_canonical_json(bundle):
    """Re-indenting a manifest changes nothing; its digest is sha256 of sorted-key compact JSON."""
    path = v2(bundle) / MANIFEST
    manifest = json.loads(path.read_text())
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert (v2(bundle) / MANIFEST_DIGEST).read_text().strip() == hashlib.sha256(canonical).hexdigest()
    path.write_text(json.dumps(manifest, indent=7))
    assert runtime.open(bundle).version == "v000002"
