"""Class statistics of non-private data: the math by hand, what updates keep or drop, saving and loading."""

from __future__ import annotations

import copy

import pytest
import torch

from abd_edge import Learner
from abd_edge.class_statistics import ClassStatistics, backbone_fingerprint, compute_class_statistics
from abd_edge.errors import BundleIntegrityError, ConfigError

from conftest import make_task, tiny_config


class _Identity(torch.nn.Module):
    """A 'model' whose features are its inputs (2-d), with a head, so statistics can be checked by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.last = torch.nn.Linear(2, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def get_classifier(self) -> torch.nn.Linear:
        return self.last


def test_statistics_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0], [0.0, 3.0]])
    rows = torch.tensor([4, 4, 7, 7, 7])
    stats = compute_class_statistics(_Identity(), x, rows, lambda b: b)
    assert stats.rows == (4, 7) and stats.counts.tolist() == [2, 3]
    assert torch.allclose(stats.means, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    # scatter: class 4 deviations (-1, 0), (1, 0); class 7: (0, -2), (0, 2), (0, 0)
    assert torch.allclose(stats.scatter, torch.tensor([[2.0, 0.0], [0.0, 8.0]], dtype=torch.float64))
    assert torch.allclose(stats.covariance, torch.tensor([[0.4, 0.0], [0.0, 1.6]]))
    norms = torch.tensor([1.0, 3.0, 1.0, 5.0, 3.0])
    assert stats.norm_quantile == pytest.approx(float(norms.quantile(0.95)))


def test_fingerprint_ignores_the_head_and_merge_needs_one_backbone_and_new_rows():
    model = _Identity()
    a = compute_class_statistics(model, torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 1]), lambda b: b)
    with torch.no_grad():
        model.last.weight.add_(1.0)
    assert a.holds_for(model)
    b = compute_class_statistics(model, torch.randn(4, 2), torch.tensor([2, 2, 3, 3]), lambda b: b)
    m = a.merged(b)
    assert m.rows == (0, 1, 2, 3) and torch.allclose(m.scatter, a.scatter + b.scatter)
    with pytest.raises(ValueError, match="rows \\[2, 3\\] exist already"):
        m.merged(b)
    with torch.no_grad():
        model.scale.mul_(2.0)
    assert not a.holds_for(model)
    c = compute_class_statistics(model, torch.randn(4, 2), torch.tensor([4, 4, 5, 5]), lambda b: b)
    with pytest.raises(ValueError, match="different backbones"):
        a.merged(c)


def test_bad_statistics_are_refused():
    with pytest.raises(ValueError, match="need means"):
        ClassStatistics("x", (0, 1), torch.zeros(2, 3), torch.ones(2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="distinct"):
        ClassStatistics("x", (0, 0), torch.zeros(2, 2), torch.ones(2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.float64), 1.0)
    with pytest.raises(ConfigError, match="class_statistics must be True or False"):
        tiny_config(class_statistics="yes")


def test_updates_keep_add_or_drop_statistics(tmp_path):
    learner = Learner(tiny_config("finetune"))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    stats = learner._state.class_statistics
    assert stats is not None and stats.rows == (0, 1) and stats.holds_for(learner.model)
    x, y = make_task([0, 1], seed=1)
    idx = torch.tensor([0 if int(v) == 0 else 1 for v in y])
    again = compute_class_statistics(learner.model, x, idx, lambda b: learner._state.normalizer(b.float() / 255))
    assert torch.allclose(again.means, stats.means, atol=1e-5)  # the final model, un-augmented images
    # saved and loaded with the learner (and so with every bundle of it)
    learner.save(tmp_path / "l")
    loaded = Learner.load(tmp_path / "l")
    got = loaded._state.class_statistics
    assert got is not None and got.rows == stats.rows and torch.equal(got.scatter, stats.scatter)
    assert got.norm_quantile == stats.norm_quantile and got.holds_for(loaded.model)
    from abd_edge.describe import describe

    info = describe(tmp_path / "l")  # what `abd-edge info` prints
    assert info["class_statistics"]["rows"] == [0, 1] and info["class_statistics"]["n_images"] == int(stats.counts.sum())
    # a non-private update trains the backbone: the old statistics no longer hold and are replaced by its own
    learner.learn_new_classes(make_task([2, 3], seed=2), show_progress=False)
    after = learner._state.class_statistics
    assert after is not None and after.rows == (2, 3) and after.backbone == backbone_fingerprint(learner.model)
    # switched off: none kept
    off = Learner(tiny_config("finetune", class_statistics=False))
    off.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    assert off._state.class_statistics is None


def test_a_tampered_statistics_entry_fails_loading(tmp_path):
    import json

    from abd_edge.bundle_format import write_manifest

    learner = Learner(tiny_config("finetune"))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    d = learner.save(tmp_path / "l")
    state = json.loads((d / "state.json").read_text())
    state["class_statistics"]["rows"] = [0, 5]  # a row the registry does not have
    (d / "state.json").write_text(json.dumps(state))
    write_manifest(d, "learner", ["weights.safetensors", "state.json"], abd_edge_version=state["abd_edge_version"])
    with pytest.raises(BundleIntegrityError, match="class statistics"):
        Learner.load(d)


def test_record_class_statistics_for_a_learner_without_them(tmp_path):
    """A learner kept without statistics gains them from its classes' images; the same as if kept at training time."""
    from abd_edge.errors import LabelError

    with_stats = Learner(tiny_config("finetune"))
    with_stats.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    learner = Learner(tiny_config("finetune", class_statistics=False))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    assert learner._state.class_statistics is None
    with pytest.raises(LabelError, match="label 7 has not been learned"):
        learner.record_class_statistics(make_task([0, 7], seed=1))
    assert learner._state.class_statistics is None  # bad input changed nothing
    stats = learner.record_class_statistics(make_task([0, 1], seed=1))
    ref = with_stats._state.class_statistics
    assert stats.rows == ref.rows and torch.allclose(stats.means, ref.means, atol=1e-5)
    assert torch.allclose(stats.scatter, ref.scatter, rtol=1e-4, atol=1e-3)
    with pytest.raises(LabelError, match="kept already"):
        learner.record_class_statistics(make_task([1], seed=3))
    assert learner._state.class_statistics is stats
    loaded = Learner.load(learner.save(tmp_path / "l"))
    assert loaded._state.class_statistics is not None and loaded._state.class_statistics.rows == (0, 1)


def test_training_accuracy_comes_from_the_statistics_pass_over_every_image(monkeypatch):
    """One feature pass after training gives both the statistics and the report's accuracy: over all images, not a sample."""
    x, y = make_task([0, 1], seed=1)
    learner = Learner(tiny_config("finetune", train_eval_max_images=4))
    with monkeypatch.context() as m:
        m.setattr(Learner, "_accuracy_on", lambda *a, **k: pytest.fail("a second pass over the training images"))
        report = learner.learn_new_classes((x, y), show_progress=False)
    assert report.train_accuracy == pytest.approx(learner.evaluate((x, y)), abs=1e-9)  # every image, as predict sees them
    idx = torch.tensor([0 if int(v) == 0 else 1 for v in y])
    again = compute_class_statistics(learner.model, x, idx, lambda b: learner._state.normalizer(b.float() / 255))
    stats = learner._state.class_statistics
    assert stats is not None and torch.allclose(again.scatter, stats.scatter, rtol=1e-5, atol=1e-6)
    # without statistics the accuracy is measured on a sample of train_eval_max_images (4 here: a multiple of 1/4)
    off = Learner(tiny_config("finetune", train_eval_max_images=4, class_statistics=False))
    rep = off.learn_new_classes((x, y), show_progress=False)
    assert rep.train_accuracy is not None and (4 * rep.train_accuracy) == pytest.approx(round(4 * rep.train_accuracy))
