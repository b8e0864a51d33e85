"""End-to-end runs of the Learner on tiny data, and its promises at the boundary."""

import copy

import pytest
import torch

from abd_edge import Learner
from abd_edge.errors import (
    BundleIntegrityError,
    BundleMissingFileError,
    BundleVersionError,
    ConfigError,
    DatasetError,
    ImageSpecError,
    LabelError,
    NotFittedError,
)
from conftest import make_task, tiny_config


def state_snapshot(learner: Learner):
    st = learner._state
    weights = {k: v.clone() for k, v in st.model.state_dict().items()} if st.model is not None else None
    gen = {k: v.clone() for k, v in st.generator.state_dict().items()} if st.generator is not None else None
    opt = None
    if st.generator_opt is not None:
        opt = {f"{pid}.{k}": v.clone() for pid, s in st.generator_opt.state_dict()["state"].items()
               for k, v in s.items() if isinstance(v, torch.Tensor)}
    return (st.registry.to_dict(), st.tasks_learned, st.input_shape, weights, gen, len(learner.history), opt)


def assert_same_state(a, b):
    assert a[:3] == b[:3] and a[5] == b[5]
    for wa, wb in ((a[3], b[3]), (a[4], b[4]), (a[6], b[6])):
        if wa is None:
            assert wb is None
            continue
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("method", ["abd", "deepinversion", "lwf", "lwf_mc", "finetune"])
def test_two_tasks_end_to_end(method, tmp_path):
    learner = Learner(tiny_config(method))
    x1, y1 = make_task([0, 1])
    r1 = learner.learn_new_classes((x1, y1), class_names={0: "zero", 1: "one"})
    assert r1.class_indices == [0, 1] and r1.names_added == ["zero", "one"]
    assert r1.train_seconds > 0 and len(r1.epoch_losses) == 1
    x2, y2 = make_task([7, 9], seed=1)
    r2 = learner.learn_new_classes((x2, y2))
    assert r2.class_indices == [2, 3] and learner.class_names == ["zero", "one", "7", "9"]
    if method in ("abd", "deepinversion"):
        assert r1.dream_iterations == 3 and r1.dream_seconds > 0
        assert {"local_ce", "head_ce", "feature_kd"} <= set(r2.epoch_losses[0]) if method == "abd" else True
        imgs, labels = learner.dream(5)
        assert imgs.shape == (5, 1, 8, 8) and labels.shape == (5,) and int(labels.max()) < 4
    else:
        with pytest.raises(NotFittedError, match="trains no generator"):
            learner.dream(2)
    acc = learner.evaluate((torch.cat([x1, x2]), y1 + y2))
    assert 0.0 <= acc <= 1.0
    pred = learner.predict(x2[:3])
    assert pred.indices.shape == (3,) and all(lab in (0, 1, 7, 9) for lab in pred.labels)
    assert torch.allclose(learner.predict_proba(x2[:3]).sum(1), torch.ones(3), atol=1e-5)


def test_learner_learns_separable_classes():
    learner = Learner(tiny_config("abd", first_task=tiny_config().first_task.__class__(
        epochs=8, lr=0.05, batch_size=16, schedule="cosine", milestones=())))
    x, y = make_task(["a", "b", "c"], n_per_class=20)
    learner.learn_new_classes((x, y))
    assert learner.evaluate((x, y)) > 0.9


def test_save_load_continues_exactly(tmp_path):
    x1, y1 = make_task([0, 1])
    x2, y2 = make_task([2, 3], seed=1)
    a = Learner(tiny_config("abd"))
    a.learn_new_classes((x1, y1))
    a.save(tmp_path / "l")
    b = Learner.load(tmp_path / "l")
    assert b.class_names == a.class_names and b.tasks_learned == 1 and len(b.history) == 1
    assert torch.equal(a.logits(x1), b.logits(x1))
    a.learn_new_classes((x2, y2))
    b.learn_new_classes((x2, y2))
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    for va, vb in zip(a.generator.state_dict().values(), b.generator.state_dict().values()):
        assert torch.equal(va, vb)


def test_same_seed_same_result():
    x1, y1 = make_task([0, 1])
    runs = []
    for _ in range(2):
        learner = Learner(tiny_config("abd"))
        learner.learn_new_classes((x1, y1))
        runs.append(learner.logits(x1))
    assert torch.equal(runs[0], runs[1])
    other = Learner(tiny_config("abd", seed=1))
    other.learn_new_classes((x1, y1))
    assert not torch.equal(runs[0], other.logits(x1))


def test_head_grows_past_capacity():
    learner = Learner(tiny_config("finetune", max_classes=2))
    learner.learn_new_classes(make_task([0, 1]))
    learner.learn_new_classes(make_task([2, 3, 4], seed=2))
    assert learner.model.num_classes >= 5 and learner.num_classes == 5


def test_no_training_images_kept_after_call():
    """No tensor reachable from the learner holds the call's images (raw or as floats)."""
    import gc

    x, y = make_task([0, 1], n_per_class=10)
    learner = Learner(tiny_config("abd"))
    learner.learn_new_classes((x, y))
    gc.collect()
    as_float = x.float() / 255
    seen: set[int] = set()
    stack = [learner]
    found = []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(gc))):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.shape[1:] == x.shape[1:] and obj.shape[0] > 0:
                for ref in (x, as_float):
                    if any(torch.equal(obj[i].to(ref.dtype), ref[j]) for i in range(obj.shape[0]) for j in range(ref.shape[0])):
                        found.append(tuple(obj.shape))
            continue
        stack.extend(gc.get_referents(obj))
    assert not found, f"training images still referenced: {found}"


# ----------------------------------------------------------------- bad input
@pytest.fixture
def trained():
    learner = Learner(tiny_config("abd"))
    learner.learn_new_classes(make_task([0, 1]))
    return learner


def bad_inputs():
    x, y = make_task([5, 6])
    nan = x.float() / 255
    nan[0, 0, 0, 0] = float("nan")
    return {
        "empty": ((x[:0], []), DatasetError, "empty"),
        "already learned": (make_task([1, 5]), LabelError, "already learned"),
        "wrong size": (make_task([5, 6], size=12), ImageSpecError, "expects"),
        "wrong channels": (make_task([5, 6], channels=3), ImageSpecError, "expects"),
        "not numeric": ((torch.zeros(24, 1, 8, 8, dtype=torch.bool), y), ImageSpecError, "bool"),
        "nan": ((nan, y), ImageSpecError, "NaN"),
        "count mismatch": ((x, y[:-1]), DatasetError, "differ"),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input_raises_and_changes_nothing(trained, case):
    data, exc, match = bad_inputs()[case]
    before = state_snapshot(trained)
    with pytest.raises(exc, match=match):
        trained.learn_new_classes(data)
    assert_same_state(before, state_snapshot(trained))


@pytest.mark.parametrize("names, match", [({5: "five"}, "do not match"), (["a", "b", "c"], "3 entries"), ({5: "f", 7: "s"}, "do not match")])
def test_bad_class_names(trained, names, match):
    before = state_snapshot(trained)
    with pytest.raises(LabelError, match=match):
        trained.learn_new_classes(make_task([5, 6]), class_names=names)
    assert_same_state(before, state_snapshot(trained))


def test_class_names_as_list_follow_sorted_labels(trained):
    trained.learn_new_classes(make_task([6, 5]), class_names=["five", "six"])
    assert trained.class_names[2:] == ["five", "six"]


def test_predict_and_dream_before_learning():
    learner = Learner(tiny_config("abd"))
    with pytest.raises(NotFittedError, match="learn_new_classes first"):
        learner.predict(torch.zeros(1, 1, 8, 8))
    with pytest.raises(NotFittedError):
        learner.dream(4)
    with pytest.raises(NotFittedError):
        learner.save("/tmp/never-written")


def test_predict_wrong_shape(trained):
    with pytest.raises(ImageSpecError, match=r"expects \(1, 8, 8\)"):
        trained.predict(torch.zeros(2, 3, 8, 8))


def test_evaluate_unknown_label(trained):
    with pytest.raises(LabelError, match="has not been learned"):
        trained.evaluate(make_task([0, 42]))


def test_error_mid_dreaming_leaves_learner_unchanged(trained, monkeypatch):
    """A failure after some dreaming steps: the committed generator and its Adam state are untouched."""
    import abd_edge.dreaming as dreaming

    before = state_snapshot(trained)
    assert before[6]  # the first call left Adam state behind
    real = dreaming.inversion_losses
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(*a, **k)

    monkeypatch.setattr(dreaming, "inversion_losses", boom)
    with pytest.raises(RuntimeError, match="power cut"):
        trained.learn_new_classes(make_task([5, 6]))
    assert_same_state(before, state_snapshot(trained))
    assert all(p.requires_grad for p in trained.model.parameters())


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown method 'icarl'"):
        tiny_config("icarl")
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        tiny_config(first_task=tiny_config().first_task.__class__(batch_size=1))


# ----------------------------------------------------------------- load errors
def test_load_refuses_missing_edited_and_unknown(trained, tmp_path):
    import json

    d = tmp_path / "l"
    trained.save(d)
    # edited file
    state = d / "state.json"
    original = state.read_bytes()
    state.write_bytes(original.replace(b'"tasks_learned": 1', b'"tasks_learned": 7'))
    with pytest.raises(BundleIntegrityError, match="state.json"):
        Learner.load(d)
    state.write_bytes(original)
    # unknown format version
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleVersionError, match="99"):
        Learner.load(d)
    manifest["format_version"] = 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert Learner.load(d).tasks_learned == 1
    # missing file
    (d / "weights.safetensors").unlink()
    with pytest.raises(BundleMissingFileError, match="weights.safetensors"):
        Learner.load(d)
    with pytest.raises(BundleMissingFileError):
        Learner.load(tmp_path / "nothing-here")


def test_save_killed_between_renames_loads_previous(trained, tmp_path):
    """SIGKILL between moving the old save aside and moving the new one in: load gets the old one."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    d = tmp_path / "l"
    trained.save(d)
    script = f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from conftest import make_task
from abd_edge import Learner
learner = Learner.load({str(d)!r})
learner.learn_new_classes(make_task([5, 6]))
learner.save({str(d)!r})
"""
    env = dict(os.environ, ABD_EDGE_FAULT_POINT="commit_dir_aside")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not d.exists()  # killed with the old save aside and the new one not yet in place
    back = Learner.load(d)
    assert back.tasks_learned == 1 and back.class_names == trained.class_names
