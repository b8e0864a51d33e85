"""DeviceBudget.max_memory_mb: validation, the plan it makes, micro-batches that keep the gradients, nothing changed on refusal."""

import copy
import math
import shutil

import pytest
import torch
from torch import nn

from abd_edge import AugmentConfig, LossConfig, TrainConfig
from abd_edge.bundle_store import BundleStore
from abd_edge.data.augment import BatchAugment
from abd_edge.dreaming import ReplaySampler
from abd_edge.engine import Normalizer, train_task
from abd_edge.errors import ConfigError, MemoryBudgetError
from abd_edge.export.local_update import budget_overrides, update_bundle
from abd_edge.export.quality import QualityGate
from abd_edge.memory_budget import (
    DREAM_FIXED_MB, DREAM_MB_PER_IMAGE, DREAM_START_FIXED_MB, DREAM_START_MB_PER_GENERATOR_MB, DREAM_START_MB_PER_IMAGE,
    MIN_MICRO_BATCH, TRAIN_FIXED_MB, TRAIN_MB_PER_ROW, MemoryPlan, dream_micro_batch_at_start, plan_memory,
)
from abd_edge.methods import TaskContext, build_method
from abd_edge.microbatch import proportional_chunks, row_chunks
from abd_edge.models.generator import Generator
from abd_edge.runtime import DeviceBudget
from conftest import make_task, tiny_config
from test_local_update import bundle  # noqa: F401  (the tiny exported bundle, a fixture)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "1024"])
def test_max_memory_mb_must_be_none_or_a_positive_number(bad):
    with pytest.raises(ConfigError, match=f"max_memory_mb must be None .* got {bad!r}"):
        DeviceBudget(max_memory_mb=bad).validate()


def test_replay_pool_batches_must_be_none_or_a_count():
    with pytest.raises(ConfigError, match="replay_pool_batches must be None .* got -1"):
        DeviceBudget(replay_pool_batches=-1).validate()


@pytest.mark.parametrize("good", [None, 512, 900.5])
def test_max_memory_mb_accepts_none_and_positive_numbers(good):
    DeviceBudget(max_memory_mb=good).validate()


def test_plan_takes_the_largest_micro_batches_that_fit():
    held, cap = 600.0, 1024.0
    plan = plan_memory(cap, held, train_rows=256, dream_batch=128, pixels=32 * 32)
    assert plan.train_micro_batch == math.floor((cap - held - TRAIN_FIXED_MB) / TRAIN_MB_PER_ROW)
    assert plan.dream_micro_batch == math.floor((cap - held - DREAM_FIXED_MB) / DREAM_MB_PER_IMAGE)
    roomy = plan_memory(10_000, held, train_rows=256, dream_batch=128, pixels=32 * 32)
    assert (roomy.train_micro_batch, roomy.dream_micro_batch) == (None, None)  # whole batches fit
    assert plan_memory(None, held, train_rows=256, dream_batch=128, pixels=1024) == MemoryPlan(None, held, None, None)
    pooled = plan_memory(cap, held, train_rows=256, dream_batch=128, pixels=32 * 32, pool_mb=50.0)
    assert pooled.train_micro_batch == math.floor((cap - held - TRAIN_FIXED_MB - 50.0) / TRAIN_MB_PER_ROW)
    assert pooled.dream_micro_batch == math.floor((cap - held - DREAM_FIXED_MB - 50.0) / DREAM_MB_PER_IMAGE)
    # 16x16 images cost a quarter per image: larger micro-batches fit in the same memory
    small = plan_memory(cap, held, train_rows=256, dream_batch=128, pixels=16 * 16)
    assert small.dream_micro_batch is None and plan.dream_micro_batch < 128


def test_dreaming_replans_by_hand():
    """At dreaming's start: cap 1000, 558 held, the paper's generator (32 MiB of weights) at 32x32, batch 128."""
    fixed = DREAM_START_FIXED_MB + DREAM_START_MB_PER_GENERATOR_MB * 32
    want = math.floor((1000 - 558 - fixed) / DREAM_START_MB_PER_IMAGE)  # (442 - 273) / 3.35 = 50
    assert want == 50
    kw = dict(dream_batch=128, pixels=32 * 32, generator_mb=32)
    assert dream_micro_batch_at_start(1000, 558, planned=None, **kw) == (50, True)
    assert dream_micro_batch_at_start(1000, 558, planned=40, **kw) == (40, True)  # never above the plan
    assert dream_micro_batch_at_start(5000, 558, planned=None, **kw) == (None, True)  # the whole batch fits
    assert dream_micro_batch_at_start(5000, 558, planned=64, **kw) == (64, True)
    assert dream_micro_batch_at_start(1000, 900, planned=None, **kw) == (MIN_MICRO_BATCH, False)  # goes on at the least
    # a quarter of the pixels: a quarter of the per-image cost
    assert dream_micro_batch_at_start(1000, 558, planned=None, dream_batch=256, pixels=16 * 16, generator_mb=32) == (201, True)


def test_plan_refuses_a_budget_below_what_is_held():
    with pytest.raises(MemoryBudgetError, match="max_memory_mb=800 .* already holds 780 MiB"):
        plan_memory(800, 780, train_rows=256, dream_batch=128, pixels=1024)


def test_row_chunks_cover_the_batch_in_near_equal_slices():
    assert row_chunks(10, None) == [(0, 10)] and row_chunks(10, 10) == [(0, 10)]
    assert row_chunks(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert row_chunks(3, 2) == [(0, 3)]  # never a slice of one row (BatchNorm)
    chunks = proportional_chunks(128, 128, 64)
    assert len(chunks) == 4 and all(a1 - a0 == 32 and b1 - b0 == 32 for (a0, a1), (b0, b1) in chunks)


class TinyNet(nn.Module):
    """A classifier without BatchNorm, so micro-batches must reproduce the whole batch's gradient exactly."""

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU())
        self.head = nn.Linear(12, n_classes)

    def forward_with_features(self, x):
        f = self.body(x)
        return self.head(f), f

    def forward(self, x):
        return self.forward_with_features(x)[0]

    def get_classifier(self):
        return self.head


def _one_epoch(micro_batch, model, old, gen):
    """Two ABD steps on 32 images (batch 16 + 16 dreamed); returns the trained copy."""
    torch.manual_seed(0)
    model = copy.deepcopy(model)
    x, y = make_task([2, 3], n_per_class=16, size=8, seed=3)
    labels = torch.tensor(y)
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=16, schedule="cosine", milestones=(), grad_clip_norm=None,
                      micro_batch=micro_batch)
    rng = torch.Generator().manual_seed(5)
    ctx = TaskContext(n_old=2, n_seen=4, model=model, old_model=old)
    replay = ReplaySampler(gen, old, 2, rng, micro_batch=micro_batch)
    result = train_task(model, build_method("abd", LossConfig()), ctx, x, labels, cfg,
                        BatchAugment(AugmentConfig(crop_padding=1, flip=True, brightness=0.0, contrast=0.0)),
                        Normalizer(torch.tensor([0.5]), torch.tensor([0.25])), rng, replay=replay, show_progress=False)
    return model, result


def test_micro_batches_give_the_whole_batch_update():
    torch.manual_seed(1)
    model, old, gen = TinyNet(), TinyNet().eval(), Generator(zdim=8, img_size=8, channels=1, width=8).eval()
    whole, r_whole = _one_epoch(None, model, old, gen)
    for m in (8, 4):  # 32 rows per step ([16 real; 16 dreamed]) in 4 or 8 passes
        micro, r_micro = _one_epoch(m, model, old, gen)
        for (name, a), b in zip(whole.named_parameters(), micro.parameters()):
            assert torch.allclose(a, b, atol=1e-5, rtol=0), name
        assert r_micro.epochs[0].losses == pytest.approx(r_whole.epochs[0].losses, abs=1e-5)
    assert not torch.equal(whole.head.weight, model.head.weight)  # it did train


def test_replay_draws_in_slices_are_the_same_images():
    torch.manual_seed(2)
    old, gen = TinyNet().eval(), Generator(zdim=8, img_size=8, channels=1, width=8)
    a = ReplaySampler(gen, old, 2, torch.Generator().manual_seed(7)).sample(20)
    b = ReplaySampler(gen, old, 2, torch.Generator().manual_seed(7), micro_batch=6).sample(20)
    for f in ("images", "labels", "old_logits", "old_features"):
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=1e-6), f


def test_budget_overrides_carry_the_plan_and_nothing_else():
    cfg = tiny_config()
    o = budget_overrides(cfg, DeviceBudget(epochs=2), MemoryPlan(900, 700, 24, 12))
    assert (o["later_tasks"].micro_batch, o["dream"].micro_batch) == (24, 12)
    assert cfg.later_tasks.micro_batch is None and cfg.dream.micro_batch is None


def test_update_applies_the_budget_and_exports_no_micro_batches(bundle, tmp_path, monkeypatch):
    import abd_edge.export.local_update as lu
    from abd_edge import Learner

    shutil.copytree(bundle, tmp_path / "b")
    store = BundleStore(tmp_path / "b")
    scale = 8 * 8 / 1024
    # pretend the process holds all but enough for dreaming micro-batches of 9 (of 16)
    monkeypatch.setattr(lu, "current_rss_bytes", lambda: int((10_000 - DREAM_FIXED_MB - 9.5 * DREAM_MB_PER_IMAGE * scale) * 2**20))
    data = make_task([2, 3], seed=1)
    upd = update_bundle(store, data, budget=DeviceBudget(epochs=1, dream_iterations=2, max_memory_mb=10_000, replay_pool_batches=1000),
                        gate=QualityGate(enabled=False))
    assert upd.memory.dream_micro_batch == 9 and upd.memory.train_micro_batch is None
    assert upd.learn.dream_iterations == 2
    saved = Learner.load(store.version_dir(upd.version) / "learner")
    assert saved.config.dream.micro_batch is None and saved.config.later_tasks.micro_batch is None
    # everything else is what the update trained with: the pool capped at one batch per training step (bug: the
    # micro-batch reset re-applied the budget without the image count and saved the uncapped 1000)
    steps = math.ceil(len(data[0]) / saved.config.later_tasks.batch_size)
    assert saved.config.replay_pool_batches == steps < 1000


def test_dreaming_replans_from_what_the_process_holds_when_it_starts(bundle, tmp_path, monkeypatch, caplog):
    """Training can leave the heap larger than the plan before it assumed: dreaming re-plans, smaller, and says so."""
    import abd_edge.export.local_update as lu
    import abd_edge.learner as learner_module
    from abd_edge import Learner

    shutil.copytree(bundle, tmp_path / "b")
    store = BundleStore(tmp_path / "b")
    scale = 8 * 8 / 1024
    cap = 10_000
    monkeypatch.setattr(lu, "current_rss_bytes", lambda: int((cap - DREAM_FIXED_MB - 14.5 * DREAM_MB_PER_IMAGE * scale) * 2**20))
    gen_mb = sum(p.numel() for p in Learner.load(store.version_dir(store.read()[0]) / "learner").generator.parameters()) * 4 / 2**20
    fixed = DREAM_START_FIXED_MB + DREAM_START_MB_PER_GENERATOR_MB * gen_mb
    held_at_dreaming = cap - fixed - 11.5 * DREAM_START_MB_PER_IMAGE * scale  # room for 11 images a pass, not 14
    monkeypatch.setattr(learner_module, "current_rss_bytes", lambda: int(held_at_dreaming * 2**20))
    with caplog.at_level("INFO", logger="abd_edge.learner"):
        upd = update_bundle(store, make_task([2, 3], seed=1), gate=QualityGate(enabled=False),
                            budget=DeviceBudget(epochs=1, dream_iterations=2, max_memory_mb=cap))
    assert upd.learn.dream_micro_batch == 11 and upd.memory.dream_micro_batch == 11  # the report gives what dreaming ran with
    assert "micro-batches of 11 (planned before training: 14)" in caplog.text
    saved = Learner.load(store.version_dir(upd.version) / "learner")
    assert saved.config.dream.max_memory_mb is None and saved.config.dream.micro_batch is None
    # nothing fits at all: the least micro-batch, and a warning (training is done by then)
    monkeypatch.setattr(learner_module, "current_rss_bytes", lambda: int((cap - 1) * 2**20))
    with caplog.at_level("WARNING", logger="abd_edge.learner"):
        upd = update_bundle(store, make_task([4, 5], seed=2), gate=QualityGate(enabled=False),
                            budget=DeviceBudget(epochs=1, dream_iterations=1, max_memory_mb=cap))
    assert upd.learn.dream_micro_batch == MIN_MICRO_BATCH and "the cap may be exceeded" in caplog.text


def test_a_dreaming_cap_must_be_none_or_a_positive_number():
    with pytest.raises(ConfigError, match="dream.max_memory_mb must be None .* got 0"):
        from abd_edge import DreamConfig

        tiny_config(dream=DreamConfig(iterations=3, batch_size=16, max_memory_mb=0))


def test_a_budget_that_cannot_fit_changes_nothing(bundle, tmp_path):
    from abd_edge import runtime

    shutil.copytree(bundle, tmp_path / "b")
    device = runtime.open(tmp_path / "b")
    before, history = device.version, device.history()
    with pytest.raises(MemoryBudgetError, match="max_memory_mb=64 cannot hold this update"):
        device.learn_new_classes(make_task([2, 3], seed=1), budget=DeviceBudget(max_memory_mb=64))
    with pytest.raises(ConfigError, match="max_memory_mb must be None"):
        device.learn_new_classes(make_task([2, 3], seed=1), budget=DeviceBudget(max_memory_mb=-1))
    assert device.version == before and device.history() == history
    assert BundleStore(tmp_path / "b").versions() == [before]


def test_the_device_report_says_whether_the_peak_kept_to_the_budget(bundle, tmp_path):
    from abd_edge import runtime

    shutil.copytree(bundle, tmp_path / "b")
    device = runtime.open(tmp_path / "b", quality=QualityGate(enabled=False))
    rep = device.learn_new_classes(make_task([2, 3], seed=1), budget=DeviceBudget(epochs=1, dream_iterations=2, max_memory_mb=100_000))
    assert rep.budget_respected is True and rep.memory["max_memory_mb"] == 100_000 and rep.peak_rss_mb > 0


def test_an_update_that_trains_nothing_is_not_refused_by_the_training_estimate(bundle, tmp_path, monkeypatch):
    """A class-mean-head update without dreaming has no batch to split: a cap the ABD estimate refuses is accepted."""
    import abd_edge.export.local_update as lu
    from abd_edge.privacy.config import PrivacyConfig

    shutil.copytree(bundle, tmp_path / "b")
    store = BundleStore(tmp_path / "b")
    cap = 2_000
    monkeypatch.setattr(lu, "current_rss_bytes", lambda: int((cap - 20) * 2**20))  # 20 MiB left: no training fits
    with pytest.raises(MemoryBudgetError):
        update_bundle(store, make_task([2, 3], seed=1), budget=DeviceBudget(epochs=1, dream_iterations=0, max_memory_mb=cap),
                      gate=QualityGate(enabled=False))
    head_only = DeviceBudget(epochs=1, dream_iterations=0, max_memory_mb=cap, privacy=PrivacyConfig(target_epsilon=math.inf))
    upd = update_bundle(store, make_task([2, 3], seed=1), budget=head_only, gate=QualityGate(enabled=False))
    assert (upd.memory.train_micro_batch, upd.memory.dream_micro_batch) == (None, None) and upd.memory.max_memory_mb == cap
    assert upd.learn.train_seconds == 0.0 and upd.learn.privacy["steps"] == 0
