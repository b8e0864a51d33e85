"""Differentially private local updates: BN frozen, private loader, ledger vs accountant, bad input, dreaming."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from abd_edge import Learner
from abd_edge.privacy.config import PrivacyConfig
from abd_edge.dreaming import train_generator
from abd_edge.errors import PrivacyError
from abd_edge.privacy import dp, epsilon_of

from conftest import make_task, tiny_config

# rdp: its noise search takes ~1 s, prv's ~5 s; a class-mean release of 0.1 of the budget, then DP-SGD (the default,
# mean_init_fraction=1, releases the means and takes no DP-SGD step: tests/test_privacy_mean_init.py)
FAST = dict(accountant="rdp", epochs=2, batch_size=16, delta=1e-3, mean_init_fraction=0.1)


@pytest.fixture(scope="module")
def base_learner() -> Learner:
    torch.set_num_threads(1)
    learner = Learner(tiny_config("abd"))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    return learner


def _bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, m in model.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) for k, v in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items()}


def test_private_update_keeps_batchnorm_bit_identical_and_trains_the_head(base_learner):
    learner = copy.deepcopy(base_learner)
    before = _bn_state(learner.model)
    head_before = learner.model.get_classifier().weight.detach().clone()
    # nearest_mean sets the new rows only (the LDA rule rewrites the old rows from dreams: test_privacy_mean_init.py)
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                                    privacy=PrivacyConfig(**FAST, mean_init_rule="nearest_mean"))
    after = _bn_state(learner.model)
    assert before.keys() == after.keys() and len(before) > 0
    for k in before:
        assert torch.equal(before[k], after[k]), k
    w = learner.model.get_classifier().weight[: head_before.shape[0]]
    assert not torch.equal(head_before[2:4], w[2:4])  # the new classes' rows learned
    assert torch.equal(head_before[:2], w[:2]) and torch.equal(head_before[4:], w[4:])  # the rest exactly as released
    # Opacus's hooks and per-sample buffers are gone, every parameter trainable again for later updates.
    assert all(p.requires_grad and not hasattr(p, "grad_sample") for p in learner.model.parameters())
    assert rep.train_accuracy is None  # a statistic of the local data is not released
    assert all(k in ("epoch", "lr") or k.startswith("replay_") for e in rep.epoch_losses for k in e)


def test_no_dreamed_sample_enters_the_private_loader(base_learner, monkeypatch):
    """The loader indexes local images only; what is clipped and noised is exactly each Poisson draw."""
    learner = copy.deepcopy(base_learner)
    made: list[dp.DPSetup] = []
    draws: list[int] = []
    noised: list[int] = []
    forwards: list[int] = []
    real_make = dp.make_setup

    def spy(*args, **kwargs):
        setup = real_make(*args, **kwargs)
        made.append(setup)
        drawn, pre_step = setup.batches.epoch, setup.optimizer.pre_step

        def epoch(rng):
            for idx in drawn(rng):
                draws.append(idx.numel())
                yield idx

        def counted_pre_step(*a, **k):
            noised.append(setup.params[0].grad_sample.shape[0])  # rows whose per-sample gradients are clipped and noised
            return pre_step(*a, **k)

        setup.batches.epoch = epoch  # type: ignore[method-assign]
        setup.optimizer.pre_step = counted_pre_step  # type: ignore[method-assign]
        args[1].conv1.register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape[0]))
        return setup

    monkeypatch.setattr(dp, "make_setup", spy)
    n = 60
    learner.learn_new_classes(make_task([2, 3], n_per_class=n // 2, seed=2), privacy=PrivacyConfig(**FAST), show_progress=False)
    setup = made[0]
    assert len(setup.loader.dataset) == n  # the private loader indexes the local images and nothing else
    assert torch.equal(setup.loader.dataset.tensors[0], torch.arange(n))
    assert noised == [max(d, 1) for d in draws]  # an empty draw is a zero-gradient row: noise alone
    b = setup.plan.expected_batch_size
    # per step: the dreamed batch (fixed size, its own pass), then the local draw
    expected = [x for d in draws for x in ((b, d) if d > 0 else (b,))]
    assert forwards[: len(expected)] == expected  # (later passes: dreaming, through the released model)
    assert all(p.grad is None and not hasattr(p, "grad_sample") for p in learner.model.parameters())


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_ledger_epsilon_equals_opacus_accountant(base_learner, accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    learner = copy.deepcopy(base_learner)
    cfg = PrivacyConfig(**{**FAST, "accountant": accountant, "target_epsilon": 3.0})
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), privacy=cfg, show_progress=False)
    e = rep.privacy
    assert e["private"] and e["accountant"] == accountant and e["n_images"] == 60 and e["classes"] == [2, 3]
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    release = e["mean_init"]  # the class-mean release: one Gaussian-mechanism step at sample rate 1, then DP-SGD
    assert release["sample_rate"] == 1.0 and release["steps"] == 1 and release["part_of_update_epsilon"]
    acc.history = [(release["noise_multiplier"], 1.0, 1), (e["noise_multiplier"], e["sample_rate"], e["steps"])]
    assert e["steps"] == 2 * math.ceil(60 / 16) and e["sample_rate"] == pytest.approx(1 / 4)
    assert e["epsilon"] == pytest.approx(acc.get_epsilon(delta=e["delta"]), rel=1e-9)
    assert 3.0 - 0.05 <= e["epsilon"] <= 3.0 + 0.05  # the composed epsilon meets the target
    alone = PRVAccountant() if accountant == "prv" else RDPAccountant()
    alone.history = [(e["noise_multiplier"], e["sample_rate"], e["steps"])]
    assert alone.get_epsilon(delta=e["delta"]) < e["epsilon"] - 1e-3  # DP-SGD alone would under-report it
    alone.history = [(release["noise_multiplier"], 1.0, 1)]
    assert release["epsilon_alone"] == pytest.approx(alone.get_epsilon(delta=e["delta"]), rel=1e-9)
    assert release["epsilon_alone"] <= 0.1 * 3.0 + 0.01  # FAST's share of the budget
    assert learner.privacy_ledger[-1] == e and learner.privacy_ledger[0]["epsilon"] == "inf"


def _state(learner: Learner) -> tuple:
    return ({k: v.clone() for k, v in learner.model.state_dict().items()},
            {k: v.clone() for k, v in learner.generator.state_dict().items()}, len(learner.history), learner.num_classes)


@pytest.mark.parametrize("cfg, match", [
    (dict(target_epsilon=1e-4), "unreachable|noise multiplier"),
    (dict(delta=0.02), "not below 1/N"),
    (dict(max_grad_norm=0.0), "clipping norm"),
    (dict(max_grad_norm=-1.0), "clipping norm"),
    (dict(accountant="moments"), "accountant"),
    (dict(trainable="bn"), "BatchNorm"),
    (dict(mean_init_fraction=1.5), "mean_init_fraction"),
    (dict(mean_init_fraction=-0.1), "mean_init_fraction"),
    (dict(mean_init_fraction=float("nan")), "mean_init_fraction"),
    (dict(mean_init_clip=0.0), "mean_init_clip"),
])
def test_bad_privacy_settings_fail_before_training_and_change_nothing(base_learner, cfg, match):
    learner = copy.deepcopy(base_learner)
    before = _state(learner)
    with pytest.raises(PrivacyError, match=match):
        learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), privacy=PrivacyConfig(**{**FAST, **cfg}), show_progress=False)
    after = _state(learner)
    assert before[2:] == after[2:]
    for a, b in zip(before[:2], after[:2]):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_private_first_task_is_refused():
    learner = Learner(tiny_config("abd"))
    with pytest.raises(PrivacyError, match="BatchNorm statistics"):
        learner.learn_new_classes(make_task([0, 1], seed=1), privacy=PrivacyConfig(**FAST), show_progress=False)
    assert learner.tasks_learned == 0 and learner.history == []


def test_dreaming_after_a_private_update_depends_only_on_the_released_model(base_learner, monkeypatch):
    """The generator trained after the update equals one trained from the released model alone."""
    learner = copy.deepcopy(base_learner)
    gen0 = copy.deepcopy(learner.generator)
    opt0 = copy.deepcopy(learner._state.generator_opt.state_dict())
    seen_inputs: list[torch.Tensor] = []
    import abd_edge.learner as learner_mod

    real = learner_mod.train_generator

    def spy(gen, model, *args, **kwargs):
        outs: list[torch.Tensor] = []
        hg = gen.register_forward_hook(lambda m, a, o: outs.append(o))
        hm = model.register_forward_pre_hook(lambda m, a: seen_inputs.append(any(a[0] is o or a[0].data_ptr() == o.data_ptr() for o in outs)))
        try:
            return real(gen, model, *args, **kwargs)
        finally:
            hg.remove()
            hm.remove()

    monkeypatch.setattr(learner_mod, "train_generator", spy)
    learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), privacy=PrivacyConfig(**FAST), show_progress=False)
    assert seen_inputs and all(seen_inputs)  # every classifier input while dreaming came straight from the generator
    # Re-run dreaming from the released model, the previous generator and the seed: bit-identical generator.
    opt = torch.optim.Adam(gen0.parameters(), lr=learner.config.dream.lr)
    opt.load_state_dict(opt0)
    released = copy.deepcopy(learner.model)
    real(gen0, released, learner.num_classes, learner.config.dream, opt, learner._seeded_generator(1, salt=1), show_progress=False,
         memory_format=learner._memory_format, autocast=learner._autocast)
    for (k, a), b in zip(learner.generator.state_dict().items(), gen0.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("fraction", [1.0, 0.0])
def test_non_private_bn_frozen_update_is_recorded_as_epsilon_inf(base_learner, fraction):
    """epsilon = inf is the private schedule without noise: by default (fraction 1) the noiseless class-mean head and
    no training step; with mean_init_fraction=0, BN-frozen SGD on the new rows."""
    learner = copy.deepcopy(base_learner)
    before = _bn_state(learner.model)
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                                    privacy=PrivacyConfig(target_epsilon=math.inf, epochs=1, batch_size=16, mean_init_fraction=fraction))
    assert rep.privacy["epsilon"] == "inf" and epsilon_of(rep.privacy) == math.inf and rep.privacy["bn"] == "frozen"
    assert not rep.privacy["private"] and rep.train_accuracy is not None
    assert (rep.privacy["steps"] == 0) == (fraction == 1.0)
    assert ("mean_init" in rep.privacy) == (fraction == 1.0)
    if fraction == 1.0:
        assert rep.privacy["mean_init"]["noise_multiplier"] == 0.0 and rep.train_seconds < 1.0
    assert all(torch.equal(v, _bn_state(learner.model)[k]) for k, v in before.items())


def test_digits_private_update_end_to_end_saved_and_loaded(tmp_path):
    """A real (tiny) private update on digits: ledger saved with the learner, later non-private update noted."""
    from abd_edge.data import load_digits

    torch.set_num_threads(1)
    train, test = load_digits(train=True), load_digits(train=False)
    learner = Learner(tiny_config("abd", max_classes=10, dream=tiny_config().dream))
    learner.learn_new_classes(train.select_labels([0, 1]), show_progress=False)
    rep = learner.learn_new_classes(train.select_labels([2, 3]), show_progress=False,
                                    privacy=PrivacyConfig(target_epsilon=8.0, delta=1e-5, accountant="rdp", epochs=4, batch_size=64))
    assert rep.privacy["private"] and 0 < rep.privacy["epsilon"] <= 8.05
    acc = learner.evaluate(test.select_labels([0, 1, 2, 3]))
    assert acc > 0.3  # better than chance (0.25) after a private update of a few steps
    learner.save(tmp_path / "l")
    loaded = Learner.load(tmp_path / "l")
    assert loaded.privacy_ledger == learner.privacy_ledger
    assert loaded.privacy_summary["labels_without_guarantee"] == [0, 1]
    assert "no total claim holds for classes [0, 1]" in loaded.privacy_ledger[1]["claim"]


def test_train_task_uses_the_supplied_setup():
    """The seam: batches, optimizer and step come from the setup; the default is the plain update."""
    from abd_edge.config import TrainConfig
    from abd_edge.data.augment import BatchAugment
    from abd_edge.engine import Normalizer, ShuffledBatches, TrainingSetup, train_task
    from abd_edge.methods import TaskContext, build_method
    from abd_edge.models import build_backbone
    from abd_edge.config import AugmentConfig, LossConfig

    x, y = make_task([0, 1], n_per_class=10, seed=3)
    labels = torch.tensor([0] * 10 + [1] * 10)
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=4, schedule="cosine", milestones=())
    norm = Normalizer(torch.zeros(1), torch.ones(1))
    aug = BatchAugment(AugmentConfig(crop_padding=0, flip=False, brightness=0.0, contrast=0.0))

    def run(setup_factory):
        torch.manual_seed(0)
        model = build_backbone("resnet20", 4, 1)
        ctx = TaskContext(0, 2, model, None)
        setup = setup_factory(model)
        res = train_task(model, build_method("abd", LossConfig()), ctx, x, labels, cfg, aug, norm,
                         torch.Generator().manual_seed(1), show_progress=False, setup=setup)
        return model, res

    default, r0 = run(lambda m: None)
    plain, r1 = run(lambda m: TrainingSetup.plain(m, 20, cfg, torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), plain.state_dict().values()))
    # a setup whose batches cover only the first 8 images and whose optimizer holds none of the model's parameters
    dummy = torch.zeros(1, requires_grad=True)
    frozen_opt = lambda m: TrainingSetup(m, torch.optim.SGD([dummy], lr=0.1), ShuffledBatches(8, 4, torch.device("cpu")))
    still, r2 = run(frozen_opt)
    assert r2.real_images == 2 * 8 and r0.real_images == 2 * 20
    torch.manual_seed(0)
    fresh = build_backbone("resnet20", 4, 1)
    assert all(torch.equal(a, b) for (k, a), b in zip(fresh.named_parameters(), still.parameters()))


def test_privacy_config_is_a_top_level_name():
    """The README's quickstart imports it from the package, like the other configs."""
    import abd_edge
    from abd_edge.privacy.config import PrivacyConfig

    assert abd_edge.PrivacyConfig is PrivacyConfig and "PrivacyConfig" in abd_edge.__all__


def test_augment_multiplicity_clips_one_averaged_gradient_per_image(base_learner, monkeypatch):
    """K views of each drawn image; their per-row gradients are averaged per image before Opacus clips and noises."""
    learner = copy.deepcopy(base_learner)
    k = 3
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    checked: list[int] = []
    real_make = dp.make_setup

    def spy(*args, **kwargs):
        setup = real_make(*args, **kwargs)
        real_batch, average = setup.real_batch, setup._average_views

        def recorded_batch(images, labels, idx, *a):
            x, y = real_batch(images, labels, idx, *a)
            batches.append((idx.clone(), y.clone()))
            assert torch.equal(y, labels[idx].repeat_interleave(k)) and x.shape[0] == k * idx.numel()
            return x, y

        def checked_average():
            views = [p.grad_sample.clone() for p in setup.params]
            average()
            for v, p in zip(views, setup.params):
                assert p.grad_sample.shape[0] * k == v.shape[0]
                for i in range(p.grad_sample.shape[0]):  # image i's rows are k*i .. k*i+k-1
                    assert torch.allclose(p.grad_sample[i], v[k * i : k * i + k].mean(0), atol=1e-6)
            checked.append(setup.params[0].grad_sample.shape[0])

        setup.real_batch = recorded_batch  # type: ignore[method-assign]
        setup._average_views = checked_average  # type: ignore[method-assign]
        return setup

    monkeypatch.setattr(dp, "make_setup", spy)
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                                    privacy=PrivacyConfig(**FAST, augment_multiplicity=k))
    assert checked == [idx.numel() for idx, _ in batches if idx.numel() > 0] and len(checked) > 0
    assert rep.privacy["config"]["augment_multiplicity"] == k


def test_last_block_update_trains_only_the_last_block_and_the_head(base_learner):
    learner = copy.deepcopy(base_learner)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                              privacy=PrivacyConfig(**FAST, trainable="last_block"))
    after = learner.model.state_dict()
    last = f"blocks.{len(learner.model.blocks) - 1}."
    changed = {k for k in before if before[k].shape == after[k].shape and not torch.equal(before[k], after[k])}
    assert {f"{last}conv1.weight", f"{last}conv2.weight"} <= changed
    assert all(k.startswith((last + "conv", "last.")) for k in changed), changed  # BatchNorm included: untouched
    assert "last.weight" in changed  # the grown head's compared rows


@pytest.mark.parametrize("cfg, match", [
    (dict(augment_multiplicity=0), "augment_multiplicity"),
    (dict(momentum=1.0), "momentum"),
])
def test_bad_multiplicity_or_momentum_is_refused(cfg, match):
    with pytest.raises(PrivacyError, match=match):
        PrivacyConfig(**cfg).validate()


def test_default_real_batch_is_one_view_drawn_as_before():
    """The seam's default draws exactly what the loop drew before it existed: one augmentation, same RNG use."""
    from abd_edge.config import AugmentConfig
    from abd_edge.data.augment import BatchAugment, to_unit_float
    from abd_edge.engine import Normalizer, TrainingSetup

    x, _ = make_task([0, 1], n_per_class=6, seed=4)
    labels = torch.arange(12) % 2
    idx = torch.tensor([5, 0, 7, 3])
    aug = BatchAugment(AugmentConfig(crop_padding=1, flip=True, brightness=0.0, contrast=0.0))
    norm = Normalizer(torch.full((1,), 0.5), torch.full((1,), 0.25))
    setup = TrainingSetup(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), None)  # type: ignore[arg-type]
    r1, r2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    got_x, got_y = setup.real_batch(x, labels, idx, aug, norm, r1)
    want = norm(aug(to_unit_float(x[idx]), r2))
    assert torch.equal(got_x, want) and torch.equal(got_y, labels[idx])
    assert torch.equal(r1.get_state(), r2.get_state())  # the RNG advanced exactly as before: later draws unchanged
