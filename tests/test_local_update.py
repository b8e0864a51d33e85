"""export/local_update.py: the one local update of a bundle that the runtime and the simulation share."""

import pytest

from abd_edge import LearnerConfig
from abd_edge.bundle_store import BundleStore
from abd_edge.errors import ConfigError, UpdateRejectedError
from abd_edge.export import export_bundle
from abd_edge.export.local_update import budget_overrides, update_bundle
from abd_edge.export.quality import QualityGate
from abd_edge.runtime import DeviceBudget
from conftest import fitted_learner, make_task


def test_budget_overrides_set_later_tasks_and_dreaming_only():
    cfg = LearnerConfig.short_budget(epochs=5, dream_iterations=500)
    o = budget_overrides(cfg, DeviceBudget(epochs=3, dream_iterations=7))
    assert o["later_tasks"].epochs == 3 and o["later_tasks"].batch_size == cfg.later_tasks.batch_size  # None: the learner's
    assert o["dream"].iterations == 7 and o["dream"].lr == cfg.dream.lr
    assert o["later_tasks"].lr == cfg.later_tasks.lr and set(o) == {"later_tasks", "dream", "replay_pool_batches"}  # first task untouched
    assert o["replay_pool_batches"] == cfg.replay_pool_batches  # None: the bundle's own
    assert budget_overrides(cfg, DeviceBudget(replay_pool_batches=6))["replay_pool_batches"] == 6
    few = budget_overrides(cfg, DeviceBudget(epochs=2, batch_size=10, replay_pool_batches=6), n_images=25)
    assert few["replay_pool_batches"] == 6  # 2 epochs x 3 steps
    few = budget_overrides(cfg, DeviceBudget(epochs=1, batch_size=10, replay_pool_batches=6), n_images=25)
    assert few["replay_pool_batches"] == 3  # no more batches than steps
    assert budget_overrides(cfg, DeviceBudget(batch_size=16))["later_tasks"].batch_size == 16
    assert cfg.later_tasks.epochs == 5  # the config itself is not changed


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    learner, _, _ = fitted_learner()
    path = tmp_path_factory.mktemp("b") / "bundle"
    export_bundle(learner, path)
    return path


def test_update_commits_a_child_version(bundle, tmp_path):
    import shutil

    shutil.copytree(bundle, tmp_path / "b")
    store = BundleStore(tmp_path / "b")
    parent = store.current_version()
    upd = update_bundle(store, make_task([2, 3], seed=1), {2: "two", 3: "three"},
                        budget=DeviceBudget(epochs=1, dream_iterations=2), gate=QualityGate(enabled=False))
    assert upd.parent_version == parent and store.current_version() == upd.version != parent
    version, manifest = store.read()
    assert manifest["parent_version"] == parent and manifest["summary"]["update"] == "local"
    assert [c["name"] for c in manifest["classes"]] == ["zero", "one", "two", "three"]
    assert upd.learn.labels_added == [2, 3] and upd.quality["passed"] is True
    # the budget reached the learner: one later-task epoch, two dreaming iterations
    assert len(upd.learn.epoch_losses) == 1 and upd.learn.dream_iterations == 2


def test_a_refused_or_invalid_update_commits_nothing(bundle, tmp_path):
    import shutil

    shutil.copytree(bundle, tmp_path / "b")
    store = BundleStore(tmp_path / "b")
    before = store.current_version()
    with pytest.raises(UpdateRejectedError, match="max_abs_logit"):
        update_bundle(store, make_task([2, 3], seed=1), budget=DeviceBudget(epochs=1, dream_iterations=2),
                      gate=QualityGate(max_abs_logit=1e-9))
    with pytest.raises(ConfigError, match="epochs must be >= 1, got 0"):
        update_bundle(store, make_task([2, 3], seed=1), budget=DeviceBudget(epochs=0))
    assert store.current_version() == before and store.versions() == [before]
