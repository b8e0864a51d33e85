import pytest
import torch

from abd_edge.errors import ConfigError
from abd_edge.models import build_backbone, build_generator, count_parameters


def test_resnet32_parameter_count():
    m = build_backbone("resnet32", 10, 3)
    assert count_parameters(m) == 464_154  # "0.46 M" of the spec
    assert m.feature_dim == 64
    assert m.depth == 32 and len(m.blocks) == 15
    logits, feats = m.forward_with_features(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats.shape == (2, 64)


def test_classifier_contract_features_head_and_growth():
    """timm's contract: forward = forward_head(forward_features); grow_head keeps every learned row exactly."""
    m = build_backbone("resnet20", 4, 3).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (3, 64)
        assert torch.equal(m.forward_head(feats), m(x))
        before = m(x)
        head = m.get_classifier()
        m.grow_head(7)
        after = m(x)
    assert m.get_classifier() is not head and m.num_classes == 7
    assert torch.equal(after[:, :4], before)  # old classes score exactly as before
    assert torch.equal(m.get_classifier().bias[4:], torch.zeros(3))
    assert m.get_classifier().weight[4:].abs().sum() > 0  # new rows initialised, not zero
    with pytest.raises(ValueError, match="already has 7"):
        m.grow_head(5)


def test_resnet_grey_small_images():
    m = build_backbone("resnet32", 10, 1)
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_option_a_shortcut_has_no_parameters():
    m = build_backbone("resnet32", 10, 3)
    first_of_stage2 = m.blocks[5]
    assert sum(p.numel() for p in first_of_stage2.shortcut.parameters()) == 0
    x = torch.randn(1, 16, 8, 8)
    y = first_of_stage2.shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0


def test_generator_shapes_and_size():
    g = build_generator("abd", 32, 3)
    assert count_parameters(g) == 8_423_939
    assert g.l1.weight.numel() == 1000 * 128 * 8 * 8  # the 8.2 M Linear of the spec
    assert g(torch.randn(4, 1000)).shape == (4, 3, 32, 32)
    assert build_generator("abd", 64, 3)(torch.randn(2, 1000)).shape == (2, 3, 64, 64)
    assert build_generator("abd", 8, 1)(torch.randn(2, 1000)).shape == (2, 1, 8, 8)
    compact = build_generator("abd_compact", 32, 3)
    assert count_parameters(compact) < count_parameters(g) / 14
    # the final affine-free BN standardises each channel of a training batch
    out = g.train()(torch.randn(64, 1000))
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert g.body[-1].affine is False and g.body[2].eps == 0.8


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 10, 3)
    with pytest.raises(ConfigError, match="unknown generator"):
        build_generator("gan", 32, 3)
    with pytest.raises(ValueError, match="8\\*2\\^k"):
        build_generator("abd", 48, 3)


def test_eval_features_batches_leave_mode_and_bn_statistics_alone():
    from abd_edge.models.resnet import eval_features

    torch.manual_seed(0)
    model = build_backbone("resnet20", 4, 3).train()
    x = torch.randn(10, 3, 32, 32)
    stats = [b.running_mean.clone() for b in model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    whole = eval_features(model, x, batch_size=64)
    assert model.training  # restored
    assert all(torch.equal(s, b.running_mean) for s, b in zip(stats, [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]))
    with torch.no_grad():
        ref = model.eval().forward_features(x)
    assert whole.dtype == torch.float32 and torch.allclose(eval_features(model, x, batch_size=3), ref, atol=1e-5)
    halved = eval_features(model, x * 2, batch_size=4, prepare=lambda b: b / 2)
    assert torch.allclose(halved, ref, atol=1e-5)


def test_the_generator_optimizer_is_fused_adam_and_steps_like_adam():
    """Fused for its memory (no foreach temporaries): the same update as torch's default Adam, to float rounding."""
    import copy

    from abd_edge.learner_state import generator_optimizer
    from abd_edge.models.generator import Generator

    assert generator_optimizer(Generator(zdim=16, img_size=8, channels=1, width=8), 1e-3).param_groups[0]["fused"] is True
    # The arithmetic on a model without BatchNorm: a bias that feeds one has a true gradient of zero, and Adam turns
    # rounding noise there into full-size steps whose sign no two implementations need agree on.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    twin = copy.deepcopy(net)
    fused, plain = generator_optimizer(net, 1e-3), torch.optim.Adam(twin.parameters(), lr=1e-3)
    assert not plain.param_groups[0].get("fused")
    z = torch.randn(4, 16)
    for _ in range(3):
        for g, opt in ((net, fused), (twin, plain)):
            opt.zero_grad()
            g(z).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # the state a saved learner carries loads into it
    again = generator_optimizer(copy.deepcopy(net), 1e-3)
    again.load_state_dict(fused.state_dict())
    assert again.state_dict()["state"][0]["exp_avg"].equal(fused.state_dict()["state"][0]["exp_avg"])


def test_loaded_adam_moments_take_their_weights_layout():
    """Bug: a saved learner's Adam moments load contiguous while the generator's weights are channels_last; the fused
    kernel pairs elements by memory position, so the first step after loading updated the wrong elements."""
    from abd_edge.learner_state import align_state_to_parameters, generator_optimizer

    torch.manual_seed(0)
    w0 = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    moments = torch.arange(w0.numel(), dtype=torch.float32).view(w0.shape)  # contiguous, as a checkpoint stores them
    after = {}
    for name in ("fused", "reference"):
        w = torch.nn.Parameter(w0.clone(memory_format=torch.channels_last))
        opt = generator_optimizer(torch.nn.ParameterList([w]), 0.1) if name == "fused" else torch.optim.Adam([w], lr=0.1)
        w.grad = torch.ones_like(w)
        opt.step()
        sd = opt.state_dict()
        sd["state"][0].update(exp_avg=moments.clone(), exp_avg_sq=torch.ones(w.shape))
        opt.load_state_dict(sd)
        align_state_to_parameters(opt)
        assert opt.state[w]["exp_avg"].stride() == w.stride() and opt.state[w]["exp_avg"].equal(moments)
        w.grad = torch.zeros_like(w)
        opt.step()
        after[name] = w.detach().clone()
    assert torch.allclose(after["fused"], after["reference"], atol=1e-6)
