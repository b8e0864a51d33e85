"""Config presets and dotted overrides (the bench's --set)."""

import pytest
import torch

from abd_edge.config import LearnerConfig
from abd_edge.errors import ConfigError
from abd_edge.compute import make_cuda_repeatable


def test_paper_defaults_and_short_recipe():
    paper = LearnerConfig()
    assert (paper.first_task.epochs, paper.first_task.lr, paper.first_task.milestones) == (250, 0.1, (100, 150, 200))
    assert (paper.dream.iterations, paper.dream.lr, paper.losses.feature_kd_weight) == (10_000, 1e-3, 0.1)
    short = LearnerConfig.short_budget(epochs=5, dream_iterations=500)
    assert short.recipe == "short" and short.later_tasks.schedule == "cosine" and short.later_tasks.warmup_epochs == 1.0
    assert short.dream.lr == 5e-3 and short.head_balance == "none"
    # the method's losses stay the paper's
    assert short.losses == paper.losses and short.dream.bn_weight == paper.dream.bn_weight


def test_with_overrides_parses_and_copies():
    cfg = LearnerConfig.short_budget()
    new = cfg.with_overrides({"later_tasks.lr": "0.05", "head_balance": "weight_align", "seed": "3",
                              "dream.iterations": "100", "time_budget_s": "12.5", "channels_last": "false",
                              "later_tasks.milestones": "[2, 3]"})
    assert new.later_tasks.lr == 0.05 and new.head_balance == "weight_align" and new.seed == 3
    assert new.dream.iterations == 100 and new.time_budget_s == 12.5 and new.channels_last is False
    assert new.later_tasks.milestones == (2, 3)
    assert cfg.later_tasks.lr == 0.1 and cfg.seed == 0  # the original is untouched


@pytest.mark.parametrize("bad, words", [
    ({"later_tasks.lrr": "1"}, ["later_tasks.lrr", "'lr'"]),
    ({"later_tasks": "1"}, ["group"]),
    ({"seed": "1.5"}, ["'seed'", "1.5"]),
    ({"channels_last": "1"}, ["channels_last"]),
    ({"head_balance": "sideways"}, ["head_balance", "sideways"]),  # right type, then rejected by validate()
    ({"later_tasks.lr": "-1"}, ["lr", "-1"]),
])
def test_with_overrides_rejects(bad, words):
    with pytest.raises(ConfigError) as e:
        LearnerConfig.short_budget().with_overrides(bad)
    for w in words:
        assert w in str(e.value)


def test_make_cuda_repeatable_sets_cudnn_flags():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        make_cuda_repeatable()
        assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
