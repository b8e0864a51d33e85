"""Every loss term against a value computed by hand on tiny tensors."""

import math

import pytest
import torch

from abd_edge.config import LossConfig, TrainConfig
from abd_edge.dreaming import bn_kl, class_balance_loss, content_loss, gaussian_kernel, smoothness_loss
from abd_edge.engine import lr_at, weight_align
from abd_edge.methods.abd import head_ce, importance_weighted_feature_kd, local_ce
from abd_edge.methods.base import balance_weights, soft_cross_entropy_kd
from abd_edge.methods.baselines import lwf_mc_targets


def test_content_loss_is_ce_against_own_argmax():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2  # 0.220095
    assert content_loss(logits, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # the temperature divides the logits: 1000/1000 = 1 -> log(1 + e^-1)
    assert content_loss(torch.tensor([[1000.0, 0.0]]), 1000.0).item() == pytest.approx(0.313262, abs=1e-6)


def test_class_balance_loss_values():
    even = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert class_balance_loss(even).item() == pytest.approx(0.0, abs=1e-6)
    one_class = torch.tensor([[50.0, 0.0], [50.0, 0.0]])
    assert class_balance_loss(one_class).item() == pytest.approx(1.0, abs=1e-6)
    # mean softmax (0.75, 0.25): 1 + (0.75 ln .75 + .25 ln .25) / ln 2 = 0.188722
    mixed = torch.tensor([[50.0, 0.0], [0.0, 0.0]])
    assert class_balance_loss(mixed).item() == pytest.approx(0.188722, abs=1e-5)


def test_bn_kl_hand_values():
    z, o = torch.zeros(1), torch.ones(1)
    assert bn_kl(z, o, z, o).item() == pytest.approx(0.0, abs=1e-7)
    # mean shifted by 1, equal variances: 0.5
    assert bn_kl(o, o, z, o).item() == pytest.approx(0.5, abs=1e-6)
    # batch variance 4, running variance 1: 0.5 ln 4 - 0.5 (1 - 1/4) = 0.318147
    assert bn_kl(z, 4 * o, z, o).item() == pytest.approx(0.318147, abs=1e-6)
    # averaged over channels
    both = bn_kl(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 4.0]), torch.zeros(2), torch.ones(2))
    assert both.item() == pytest.approx((0.5 + 0.318147) / 2, abs=1e-6)


def test_gaussian_kernel_is_sigma_one():
    g1 = torch.tensor([0.054489, 0.244201, 0.402620, 0.244201, 0.054489])  # exp(-d^2/2), normalised
    k = gaussian_kernel(5, 1.0)
    assert torch.allclose(k, g1[:, None] * g1[None, :], atol=1e-6)


def test_smoothness_loss_delta_image():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    k = gaussian_kernel(5, 1.0)
    g1 = torch.tensor([0.054489, 0.244201, 0.402620, 0.244201, 0.054489])
    k2 = g1[:, None] * g1[None, :]
    expected = ((k2**2).sum() - k2[2, 2] ** 2 + (1 - k2[2, 2]) ** 2) / 81
    assert smoothness_loss(x, k).item() == pytest.approx(expected.item(), rel=1e-4)
    assert smoothness_loss(torch.full((2, 3, 8, 8), 0.3), k).item() == pytest.approx(0.0, abs=1e-10)


def test_local_ce_uses_only_new_logits():
    logits = torch.tensor([[100.0, 2.0, 3.0]])  # the old logit (100) must not matter
    assert local_ce(logits, torch.tensor([2]), n_old=1, n_seen=3).item() == pytest.approx(0.313262, abs=1e-6)


def test_balance_weights_and_head_ce():
    w = balance_weights(torch.tensor([0, 2, 3]), n_old=1, n_seen=4)
    assert w.tolist() == pytest.approx([0.25, 0.75, 0.75])
    head = torch.nn.Linear(2, 6)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    feats = torch.randn(2, 2, requires_grad=True)
    loss = head_ce(head, feats, torch.tensor([0, 2]), n_old=1, n_seen=4)
    # zero head -> CE = ln 4 per sample; weights 0.25 and 0.75 -> mean 0.5 ln 4
    assert loss.item() == pytest.approx(0.5 * math.log(4), abs=1e-6)
    loss.backward()
    assert feats.grad is None or torch.count_nonzero(feats.grad) == 0  # only the head learns
    assert head.weight.grad is not None


def test_importance_weighted_feature_kd():
    w_old = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    f_old = torch.zeros(2, 2)
    f_new = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # W (f_new - f_old) = [[1, 2], [0, 2]]; squared sums 5 and 4; mean 4.5; / n_old = 2.25
    assert importance_weighted_feature_kd(w_old, f_new, f_old).item() == pytest.approx(2.25)


def test_soft_kd_and_lwf_mc_targets():
    z = torch.zeros(3, 2)
    # teacher = student = uniform over 2: entropy ln 2, times T^2 = 4
    assert soft_cross_entropy_kd(z, z, 2.0).item() == pytest.approx(4 * math.log(2), abs=1e-6)
    t = lwf_mc_targets(torch.zeros(2, 1), torch.tensor([1, 2]), n_seen=3)
    assert t.tolist() == [[0.5, 1.0, 0.0], [0.5, 0.0, 1.0]]


def test_abd_loss_is_the_sum_of_its_parts():
    from abd_edge.methods import TaskContext, build_method
    from abd_edge.methods.base import StepOutputs
    from abd_edge.models import build_backbone

    torch.manual_seed(0)
    model, old = build_backbone("resnet20", 4, 3), build_backbone("resnet20", 4, 3)
    ctx = TaskContext(n_old=2, n_seen=4, model=model, old_model=old)
    feats, old_feats = torch.randn(4, 64), torch.randn(4, 64)
    logits = model.forward_head(feats)
    out = StepOutputs(logits, feats, torch.tensor([2, 3, 0, 1]), 2, old.forward_head(old_feats)[:, :2], old_feats)
    total, parts = build_method("abd", LossConfig()).loss(ctx, out)
    assert set(parts) == {"local_ce", "head_ce", "feature_kd"}
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)
    expected_kd = 0.1 * importance_weighted_feature_kd(old.get_classifier().weight[:2], feats, old_feats)
    assert parts["feature_kd"].item() == pytest.approx(expected_kd.item(), rel=1e-6)


def test_weight_align_matches_old_norms():
    head = torch.nn.Linear(2, 4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0], [4.0, 0.0], [9.0, 9.0]]))
        head.bias.fill_(1.0)
    gamma = weight_align(head, n_old=2, n_seen=3)
    assert gamma == pytest.approx(0.5)
    assert head.weight[2].tolist() == [2.0, 0.0] and head.bias[2].item() == 0.5
    assert head.weight[3].tolist() == [9.0, 9.0]  # unseen rows untouched


def test_lr_schedules():
    step = TrainConfig(epochs=250, lr=0.1, milestones=(100, 150, 200))
    assert lr_at(0, 250 * 10, 10, step) == pytest.approx(0.1)
    assert lr_at(100 * 10, 2500, 10, step) == pytest.approx(0.01)
    assert lr_at(210 * 10, 2500, 10, step) == pytest.approx(1e-4)
    cos = TrainConfig(epochs=5, lr=0.1, schedule="cosine", milestones=(), warmup_epochs=1)
    assert lr_at(0, 50, 10, cos) == pytest.approx(0.01)  # warm-up step 1 of 10
    assert lr_at(9, 50, 10, cos) == pytest.approx(0.1)
    assert lr_at(10, 50, 10, cos) == pytest.approx(0.1)  # cosine starts at the peak
    assert lr_at(30, 50, 10, cos) == pytest.approx(0.05)  # half-way through the decay
    # Bug: a budget of one epoch kept the recipe's one-epoch warm-up, so the whole run warmed up and ended at the
    # peak rate. The warm-up now takes at most a fifth of the run, and the rate decays to about 0 at its end.
    one = TrainConfig(epochs=1, lr=0.1, schedule="cosine", milestones=(), warmup_epochs=1)
    assert lr_at(0, 79, 79, one) == pytest.approx(0.1 / 16)  # warm-up: 79 / 5 -> 16 steps, not 79
    assert lr_at(15, 79, 79, one) == pytest.approx(0.1)
    assert lr_at(16, 79, 79, one) == pytest.approx(0.1)  # the decay starts at the peak
    assert lr_at(78, 79, 79, one) < 0.001


def test_class_balance_loss_in_bits():
    # K = 2: the paper's normalisation (log 2) and bits are the same number
    mixed = torch.tensor([[50.0, 0.0], [0.0, 0.0]])
    assert class_balance_loss(mixed, units="bits").item() == pytest.approx(0.188722, abs=1e-5)
    # K = 8, one class never dreamed, the other 7 even: KL = ln 8 - ln 7 = 0.133531 nats
    seven = torch.full((7, 8), -50.0)
    seven[torch.arange(7), torch.arange(7)] = 50.0
    assert class_balance_loss(seven).item() == pytest.approx(math.log(8 / 7) / math.log(8), abs=1e-5)  # 0.064215
    assert class_balance_loss(seven, units="bits").item() == pytest.approx(math.log2(8 / 7), abs=1e-5)  # 0.192645
    # all on one class of 8: the paper's term is 1, in bits log2 8 = 3
    one = torch.tensor([[50.0] + [0.0] * 7] * 3)
    assert class_balance_loss(one).item() == pytest.approx(1.0, abs=1e-6)
    assert class_balance_loss(one, units="bits").item() == pytest.approx(3.0, abs=1e-5)
    with pytest.raises(ValueError, match="'nats'"):
        class_balance_loss(one, units="nats")  # type: ignore[arg-type]


def test_balance_units_is_validated():
    from abd_edge.config import DreamConfig
    from abd_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="balance_units.*'nats'"):
        DreamConfig(balance_units="nats").validate()  # type: ignore[arg-type]


def test_inversion_losses_weigh_the_configured_balance_units():
    from abd_edge.config import DreamConfig
    from abd_edge.dreaming import inversion_losses

    logits = torch.tensor([[50.0] + [0.0] * 7] * 3)  # every dream on one class of 8
    x = torch.zeros(3, 3, 8, 8)  # flat images: smoothness 0
    bn = torch.zeros(())
    kernel = gaussian_kernel(5, 1.0)
    content = content_loss(logits, 1000.0).item()
    for units, balance in (("fraction", 1.0), ("bits", 3.0)):
        cfg = DreamConfig(balance_weight=2.0, balance_units=units)
        out = inversion_losses(x, logits, bn, cfg, kernel)
        assert out.balance.item() == pytest.approx(balance, abs=1e-5)
        assert out.total.item() == pytest.approx(content + 2.0 * balance, abs=1e-4)
