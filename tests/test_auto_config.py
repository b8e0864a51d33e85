"""Data-aware defaults (auto_config.py), gradient clipping, and the loud report of an update that learned nothing."""

import dataclasses
import math
import warnings

import pytest
import torch

from abd_edge import Learner, LearnerConfig
from abd_edge.auto_config import (auto_augment, auto_batch_size, auto_grad_clip, content_channels, settle_for_call,
                                  settle_for_data)
from abd_edge.config import AugmentConfig, TrainConfig
from abd_edge.errors import ConfigError
from abd_edge.reports import NewClassesNotLearnedWarning
from tests.conftest import make_task, tiny_config


@pytest.mark.parametrize("n, batch", [(280, 32), (255, 16), (256, 32), (100, 16), (10, 16), (1023, 64),
                                      (1024, 128), (10_000, 128)])
def test_auto_batch_gives_eight_steps_per_epoch(n, batch):
    assert auto_batch_size(n) == batch


def test_auto_augment_by_shape():
    # digits: 1x8x8 -> 1-pixel shifts, no flips, no jitter; CIFAR: the paper's values
    assert auto_augment(1, 8) == {"crop_padding": 1, "flip": False, "brightness": 0.0, "contrast": 0.0}
    assert auto_augment(3, 32) == {"crop_padding": 4, "flip": True, "brightness": 63 / 255, "contrast": 0.8}
    assert auto_augment(1, 32)["flip"] is False and auto_augment(3, 16)["crop_padding"] == 2
    assert auto_grad_clip(280) == 1.0 and auto_grad_clip(10_000) is None


def test_explicit_settings_win_and_input_is_untouched():
    cfg = LearnerConfig.short_budget(augment=AugmentConfig(flip=True), first_task=TrainConfig(batch_size=8))
    settled = settle_for_data(cfg, (1, 8, 8), 280)
    assert settled.augment == AugmentConfig(crop_padding=1, flip=True, brightness=0.0, contrast=0.0)
    assert settled.data_settings["image_shape"] == [1, 8, 8] and settled.data_settings["n_images"] == 280
    assert "augment.flip" not in settled.data_settings["settings"]
    assert settled.data_settings["settings"]["augment.crop_padding"] == 1
    call, per_call = settle_for_call(settled, 280)
    assert call.first_task.batch_size == 8 and call.later_tasks.batch_size == 32 and call.dream.batch_size == 128
    assert "first_task.batch_size" not in per_call and per_call["later_tasks.batch_size"] == 32
    assert cfg.augment.crop_padding == "auto" and cfg.data_settings == {}  # a copy: the input is unchanged
    assert settled.later_tasks.batch_size == "auto"  # batch sizes stay a per-call rule


def test_paper_recipe_is_what_auto_gives_on_cifar_sized_data():
    settled = settle_for_data(LearnerConfig.paper(), (3, 32, 32), 10_000)
    call, _ = settle_for_call(settled, 10_000)
    assert (call.augment.crop_padding, call.augment.flip, call.augment.brightness, call.augment.contrast) == (
        4, True, 63 / 255, 0.8)
    assert call.first_task.batch_size == 128 and call.dream.batch_size == 128
    assert call.first_task.grad_clip_norm is None


@pytest.mark.parametrize("key, value", [("augment.crop_padding", "-1"), ("augment.flip", "2"),
                                        ("augment.brightness", "1.5"), ("later_tasks.batch_size", "1"),
                                        ("later_tasks.grad_clip_norm", "0"), ("new_class_accuracy_floor", "2")])
def test_bad_values_for_auto_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        LearnerConfig.short_budget().with_overrides({key: value})


def test_auto_and_explicit_through_overrides():
    cfg = LearnerConfig.short_budget().with_overrides({"augment.flip": "false", "later_tasks.grad_clip_norm": "null"})
    assert cfg.augment.flip is False and cfg.later_tasks.grad_clip_norm is None
    assert LearnerConfig(augment="auto").augment == AugmentConfig()
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg


def test_learner_settles_reports_saves_and_reuses(tmp_path):
    cfg = tiny_config(augment=AugmentConfig(flip=False), first_task=dataclasses.replace(
        tiny_config().first_task, batch_size="auto"))
    learner = Learner(cfg)
    rep = learner.learn_new_classes(make_task([0, 1], n_per_class=20), show_progress=False)
    ds = learner.config.data_settings
    assert ds["image_shape"] == [1, 8, 8] and ds["settings"]["augment.crop_padding"] == 1
    assert rep.data_settings["augment.flip"] == {"value": False, "source": "explicit"}
    assert rep.data_settings["augment.crop_padding"] == {"value": 1, "source": "auto"}
    assert rep.data_settings["first_task.batch_size"] == {"value": 16, "source": "auto"}
    assert rep.data_settings["first_task.grad_clip_norm"] == {"value": 1.0, "source": "auto"}
    learner.save(tmp_path / "l")
    loaded = Learner.load(tmp_path / "l")
    assert loaded.config.data_settings == ds and loaded.config.augment == learner.config.augment
    rep2 = loaded.learn_new_classes(make_task([2, 3], n_per_class=20, seed=1), show_progress=False)
    assert rep2.data_settings["augment.crop_padding"]["value"] == 1 and loaded.config.data_settings == ds


def test_grey_content_in_rgb_counts_as_grey():
    grey = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    rgb_grey = grey.expand(-1, 3, -1, -1).contiguous()
    assert content_channels(grey) == 1 and content_channels(rgb_grey) == 1
    colour = rgb_grey.clone()
    colour[-1, 0] = colour[-1, 0] // 2 + 1  # one colour image, the last: the every-k-th sample must still see it
    assert content_channels(colour) == 3
    assert content_channels(torch.randint(0, 256, (1000, 3, 4, 4), dtype=torch.uint8)) == 3
    settled = settle_for_data(LearnerConfig.short_budget(), (3, 32, 32), 500, content=1)
    assert settled.augment.flip is False and settled.augment.crop_padding == 4 and settled.augment.brightness > 0
    assert settled.data_settings["content_channels"] == 1
    assert settle_for_data(LearnerConfig.short_budget(), (3, 32, 32), 500).augment.flip is True


def test_learner_does_not_flip_grey_images_stored_as_rgb():
    # Regression: digits upscaled to 32x32 RGB were flipped like photos (generalisation suite, ABD 48.1%).
    images, labels = make_task([0, 1], n_per_class=16, size=16)
    rgb = images.expand(-1, 3, -1, -1).contiguous()
    learner = Learner(tiny_config(augment=AugmentConfig()))
    rep = learner.learn_new_classes((rgb, labels), dream=False, show_progress=False)
    assert rep.data_settings["augment.flip"] == {"value": False, "source": "auto"}
    assert learner.config.data_settings["content_channels"] == 1
    colour = Learner(tiny_config(augment=AugmentConfig()))
    rep = colour.learn_new_classes(make_task([0, 1], n_per_class=16, size=16, channels=3), dream=False,
                                   show_progress=False)
    assert rep.data_settings["augment.flip"] == {"value": True, "source": "auto"}


def test_setup_step_clips_the_global_norm():
    """The plain setup clips the gradient's global norm between backward and the optimizer step."""
    from abd_edge.engine import ShuffledBatches, TrainingSetup, clip_norm

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([3.0, 0.0]))
            self.b = torch.nn.Parameter(torch.tensor([4.0]))

    class Loss:
        def loss(self, ctx, out):
            return out, {}

    def step_grads(limit):
        m = Pair()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the step leaves the weights, the grads stay readable
        setup = TrainingSetup(m, opt, ShuffledBatches(1, 1, torch.device("cpu")), limit)
        setup.step(lambda x, y, r: m.w.sum() * 3.0 + m.b.sum() * 4.0, Loss(), None, torch.zeros(1), torch.zeros(1, dtype=torch.long), None)
        return m.w.grad, m.b.grad

    w, b = step_grads(1.0)  # grads (3, 3) and (4): norm sqrt(34), scaled to 1
    n = math.sqrt(34)
    assert torch.allclose(w, torch.tensor([3.0, 3.0]) / n) and torch.allclose(b, torch.tensor([4.0]) / n)
    w, b = step_grads(None)  # no bound: the gradient as computed
    assert torch.equal(w, torch.tensor([3.0, 3.0])) and torch.equal(b, torch.tensor([4.0]))
    assert clip_norm(TrainConfig(grad_clip_norm=1.0)) == 1.0 and clip_norm(TrainConfig(grad_clip_norm=None)) is None
    assert clip_norm(TrainConfig(grad_clip_norm="auto")) is None  # unresolved: the learner settles it first


def test_direct_digits_first_task_quick():
    """Regression (issue 10): CIFAR's crop 4 + flips + batch 128 on 8x8 digits left a 2-class task near chance."""
    from abd_edge.data import load_digits

    train, test = load_digits(train=True), load_digits(train=False)
    learner = Learner(dataclasses.replace(LearnerConfig.short_budget(epochs=4, dream_iterations=0), seed=0,
                                          backbone="resnet20"))
    learner.learn_new_classes(train.select_labels([7, 8]), dream=False, show_progress=False)
    assert learner.evaluate(test.select_labels([7, 8])) >= 0.9


def test_update_that_learns_nothing_is_reported_loudly():
    learner = Learner(tiny_config(new_class_accuracy_floor=1.0))
    with pytest.warns(NewClassesNotLearnedWarning, match="did not learn its new classes"):
        rep = learner.learn_new_classes(make_task([0, 1], n_per_class=12), show_progress=False)
    assert rep.learned_new_classes is False and rep.train_accuracy < 1.0
    ok = Learner(tiny_config(new_class_accuracy_floor=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewClassesNotLearnedWarning)
        assert ok.learn_new_classes(make_task([0, 1], n_per_class=12), show_progress=False).learned_new_classes
