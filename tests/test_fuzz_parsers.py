"""Property-based tests: no edit of a manifest, pointer, learner state or predict input crashes a reader.

Every parser that reads what a user, an integrator or a broken disk can
change is fed random edits (a value replaced by another of any JSON type, a
key deleted, a list cut short, the text truncated), with the digests and
hashes recomputed half of the time so that the edit reaches the parsing code
behind the integrity checks. The property: the reader either succeeds or
raises an AbdEdgeError subclass; never a raw KeyError, TypeError, IndexError
or an exception from ONNX Runtime. The default run is derandomized and quick;
``-m slow`` runs ten times as many examples.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abd_edge import Learner, runtime
from abd_edge.bundle_format import MANIFEST, MANIFEST_DIGEST, file_entries, manifest_digest, read_manifest, write_manifest
from abd_edge.bundle_store import BundleStore
from abd_edge.errors import AbdEdgeError
from reliability_fixtures import two_version_bundle

QUICK = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def edited(draw: st.DrawFn, doc: Any) -> tuple[Any, str | None]:
    """``(document, None)`` after 1-3 structural edits, or ``(None, text)`` for a truncated serialisation."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "cut", "truncate"]))
        if op == "truncate":
            text = json.dumps(doc)
            return None, text[: draw(st.integers(0, max(0, len(text) - 1)))]
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op == "replace":
            parent[key] = draw(json_values)
        elif op == "delete":
            del parent[key]
        elif isinstance(parent[key], (list, str)):
            parent[key] = parent[key][: draw(st.integers(0, max(0, len(parent[key]) - 1)))]
    return doc, None


def write_edit(directory: Path, name: str, edit: tuple[Any, str | None], rehash: bool) -> None:
    """Write the edited ``name``; with ``rehash``, recompute file hashes and the manifest digest as a tool would."""
    doc, text = edit
    (directory / name).write_text(text if text is not None else json.dumps(doc))
    if not rehash:
        return
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
            names = [n for n in manifest["files"] if isinstance(n, str) and (directory / n).is_file()]
            manifest["files"].update(file_entries(directory, names))
            (directory / MANIFEST).write_text(json.dumps(manifest))
        (directory / MANIFEST_DIGEST).write_text(manifest_digest(manifest) + "\n")
    except (ValueError, AbdEdgeError, OSError):
        pass  # a truncated manifest has no digest to recompute


def only_abd_edge_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except AbdEdgeError:
        return None


# ----------------------------------------------------------------- the manifest parser (no torch)


@pytest.fixture
def small_dir(tmp_path: Path) -> tuple[Path, dict]:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"a" * 100)
    (d / "sub" / "b.json").write_text("{}")
    manifest = write_manifest(d, "bundle", ["a.bin", "sub/b.json"], version="v000001", parent_version=None)
    return d, json.loads(json.dumps(manifest))


def check_manifest_parser(small_dir, edit, rehash):
    d, manifest = small_dir
    write_edit(d, MANIFEST, edit, rehash)
    for strict in (False, True):
        got = only_abd_edge_errors(read_manifest, d, "bundle", required=["a.bin"], strict=strict)
        if got is not None:  # accepted: then it lists a.bin with its true hash, and the digest matches
            assert got["files"]["a.bin"] == file_entries(d, ["a.bin"])["a.bin"]


@QUICK
@given(data=st.data(), rehash=st.booleans())
def test_fuzz_manifest_parser(small_dir, data, rehash):
    check_manifest_parser(small_dir, data.draw(edited(small_dir[1])), rehash)


@pytest.mark.slow
@SLOW
@given(data=st.data(), rehash=st.booleans())
def test_fuzz_manifest_parser_long(small_dir, data, rehash):
    check_manifest_parser(small_dir, data.draw(edited(small_dir[1])), rehash)


@QUICK
@given(current=st.binary(max_size=20) | st.sampled_from([b"v000001\n", b"v000002\n", b"v1\n", b"v000001", b"../x\n"]),
       pending=st.none() | st.binary(max_size=12))
def test_fuzz_store_pointers(tmp_path_factory, current, pending):
    root = tmp_path_factory.mktemp("store")
    store = BundleStore(root)
    with store.new_version() as staged:
        (staged.path / "m.bin").write_bytes(b"m")
        staged.write_manifest()
    (root / "CURRENT").write_bytes(current)
    if pending is not None:
        (root / "PENDING").write_bytes(pending)
    only_abd_edge_errors(store.read)
    store.history()  # never raises: damaged entries carry an error message
    only_abd_edge_errors(store.rollback, "v000001")
    assert store.read("v000001")[0] == "v000001"  # the committed version itself is intact


# ----------------------------------------------------------------- the learner state and the bundle manifest


@pytest.fixture(scope="module")
def learner_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("learner") / "l"
    shutil.copytree(two_version_bundle() / "versions" / "v000002" / "learner", d)
    return d


def check_learner_state(learner_dir, edit, rehash):
    d = learner_dir.parent / "work"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(learner_dir, d)
    write_edit(d, "state.json", edit, rehash)
    got = only_abd_edge_errors(Learner.load, d)
    if got is not None:
        assert got.num_classes >= 1 and got.tasks_learned >= 1


@QUICK
@given(data=st.data(), rehash=st.just(True) | st.booleans())
def test_fuzz_learner_state(learner_dir, data, rehash):
    state = json.loads((learner_dir / "state.json").read_text())
    check_learner_state(learner_dir, data.draw(edited(state)), rehash)


@pytest.mark.slow
@SLOW
@given(data=st.data(), rehash=st.booleans())
def test_fuzz_learner_state_long(learner_dir, data, rehash):
    state = json.loads((learner_dir / "state.json").read_text())
    check_learner_state(learner_dir, data.draw(edited(state)), rehash)


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzzb") / "b"
    shutil.copytree(two_version_bundle(), d)
    return d


def check_bundle_manifest(bundle_copy, edit, rehash):
    d = bundle_copy.parent / "work"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(bundle_copy, d)
    write_edit(d / "versions" / "v000002", MANIFEST, edit, rehash)
    dev = only_abd_edge_errors(runtime.open, d)
    if dev is not None:  # accepted: then it serves without error, with as many classes as the model outputs
        p = dev.predict(np.zeros((2, *dev.input_shape), np.uint8))
        assert p.probabilities.shape == (2, dev.num_classes) and len(p.names) == 2
        dev.history()


@QUICK
@given(data=st.data(), rehash=st.just(True) | st.booleans())
def test_fuzz_bundle_manifest(bundle_copy, data, rehash):
    manifest = json.loads((bundle_copy / "versions" / "v000002" / MANIFEST).read_text())
    check_bundle_manifest(bundle_copy, data.draw(edited(manifest)), rehash)


@pytest.mark.slow
@SLOW
@given(data=st.data(), rehash=st.booleans())
def test_fuzz_bundle_manifest_long(bundle_copy, data, rehash):
    manifest = json.loads((bundle_copy / "versions" / "v000002" / MANIFEST).read_text())
    check_bundle_manifest(bundle_copy, data.draw(edited(manifest)), rehash)


# ----------------------------------------------------------------- predict inputs


@pytest.fixture(scope="module")
def device():
    return runtime.open(two_version_bundle())


@QUICK
@given(dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.float32, np.float64, np.bool_, object]),
       shape=st.lists(st.integers(0, 9), min_size=0, max_size=5))
def test_fuzz_predict_inputs(device, dtype, shape):
    x = np.zeros(shape, dtype=dtype)
    p = only_abd_edge_errors(device.predict, x)
    if p is not None:
        assert x.dtype == np.uint8 and tuple(x.shape[-3:]) == device.input_shape
        assert p.probabilities.shape == (len(p.names), device.num_classes)
