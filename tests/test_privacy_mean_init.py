"""The class-mean release of a private update: sensitivity, noise, row rule, composition, only new rows touched."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from abd_edge import Learner
from abd_edge.errors import PrivacyError
from abd_edge.privacy import dp
from abd_edge.privacy.config import PrivacyConfig
from abd_edge.privacy.mean_init import (SENSITIVITY_FACTOR, clipped_class_sums, init_rows_from_means,
                                        penultimate_features, release_class_means)

from conftest import make_task, tiny_config
from test_privacy import FAST, base_learner  # noqa: F401  (the module-scoped learner with base classes 0, 1)


def test_clipped_class_sums_and_sensitivity_by_hand():
    feats = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0], [1.0, 0.0]])
    classes = torch.tensor([0, 0, 1, 1])
    sums = clipped_class_sums(feats, classes, 2, clip=1.0)
    # clipped to norm 1: [0.6, 0.8], [0.3, 0.4] (inside), [0, -1], [1, 0]; count entries carry the clip, 1 per image
    assert torch.allclose(sums, torch.tensor([[0.9, 1.2, 2.0], [1.0, -1.0, 2.0]]))
    # removing one image moves the release by exactly its vector: norms sqrt(2), sqrt(1.25), sqrt(2), sqrt(2)
    moved = [float((sums - clipped_class_sums(feats[torch.arange(4) != i], classes[torch.arange(4) != i], 2, 1.0)).norm())
             for i in range(4)]
    assert moved == pytest.approx([math.sqrt(2), math.sqrt(1.25), math.sqrt(2), math.sqrt(2)])
    assert max(moved) == pytest.approx(SENSITIVITY_FACTOR * 1.0)  # the stated joint L2 sensitivity, attained
    # it scales with the clip: at C = 2, image 0 ([3, 4], norm 5) becomes [1.2, 1.6] and moves the sum by sqrt(4 + 4)
    sums2 = clipped_class_sums(feats, classes, 2, clip=2.0)
    assert torch.allclose(sums2[0], torch.tensor([1.5, 2.0, 4.0]))
    assert float((sums2 - clipped_class_sums(feats[1:], classes[1:], 2, 2.0)).norm()) == pytest.approx(SENSITIVITY_FACTOR * 2.0)


def test_release_adds_gaussian_noise_of_sigma_times_sensitivity():
    g = torch.Generator().manual_seed(0)
    feats, classes = torch.randn(40, 5, generator=g) * 3, torch.arange(40) % 4
    sigma, clip = 2.5, 1.5
    rel = release_class_means(feats, classes, 4, clip, sigma, torch.Generator().manual_seed(7))
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(7)) * sigma * math.sqrt(2) * clip
    noisy = clipped_class_sums(feats, classes, 4, clip) + noise
    assert torch.allclose(rel.counts, noisy[:, -1] / clip)
    assert torch.allclose(rel.means, noisy[:, :-1] / (noisy[:, -1] / clip).clamp_min(1.0)[:, None])
    assert rel.sensitivity == pytest.approx(math.sqrt(2) * clip)
    exact = release_class_means(feats, classes, 4, clip, 0.0, torch.Generator())
    assert torch.allclose(exact.counts, torch.full((4,), 10.0))  # noiseless: counts and means of the clipped features


def test_row_rule_by_hand_touches_only_the_new_rows():
    head = torch.nn.Linear(2, 5)
    with torch.no_grad():
        head.weight[:2] = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # old rows: norms 5 and 2, mean 3.5
    before = copy.deepcopy(head)
    scale = init_rows_from_means(head, 2, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # mean norms 1, 2: mean 1.5
    assert scale == pytest.approx(3.5 / 1.5)
    s = 3.5 / 1.5
    assert torch.allclose(head.weight[2:4], torch.tensor([[s, 0.0], [0.0, 2 * s]]))
    assert torch.allclose(head.bias[2:4], torch.tensor([-s * 1 / 2, -s * 4 / 2]))  # nearest mean: -s ||mu||^2 / 2
    for rows in (slice(0, 2), slice(4, 5)):
        assert torch.equal(head.weight[rows], before.weight[rows]) and torch.equal(head.bias[rows], before.bias[rows])


def test_composed_noise_meets_the_target_in_one_accountant():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    plain = dp.noise_for_target(3.0, 1e-5, [], 0.25, 40, "rdp")
    assert plain == get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.25, steps=40, accountant="rdp")
    release = dp.noise_for_target(0.3, 1e-5, [], 1.0, 1, "rdp")
    composed = dp.noise_for_target(3.0, 1e-5, [(release, 1.0, 1)], 0.25, 40, "rdp")
    acc = RDPAccountant()
    acc.history = [(release, 1.0, 1), (composed, 0.25, 40)]
    assert 3.0 - 0.011 <= acc.get_epsilon(delta=1e-5) <= 3.0
    assert composed > plain  # the release's share is paid for with more DP-SGD noise
    with pytest.raises(ValueError, match="release alone"):
        dp.noise_for_target(0.2, 1e-5, [(release, 1.0, 1)], 0.25, 40, "rdp")


def _setup_for(learner: Learner, pc: PrivacyConfig, n_per_class: int = 30):
    """The private setup of an update of classes [2, 3] built on a copy of the learner's model (what learn_new_classes does)."""
    x, y = make_task([2, 3], n_per_class=n_per_class, seed=2)
    model = copy.deepcopy(learner.model)
    plan = dp.plan_update(pc, x.shape[0], learner.config.later_tasks, first_task=False)
    labels = torch.tensor([2] * n_per_class + [3] * n_per_class)
    st = learner._state
    local = dp.LocalData(x, labels, st.normalizer, copy.deepcopy(learner.generator))
    return model, plan, local, labels


@pytest.mark.parametrize("epsilon", [math.inf, 3.0])
def test_mean_init_changes_only_the_new_rows(base_learner, epsilon):
    pc = PrivacyConfig(**{**FAST, "target_epsilon": epsilon, "mean_init_clip": 50.0})
    model, plan, local, labels = _setup_for(base_learner, pc)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = plan.train_config(base_learner.config.later_tasks)
    setup = dp.make_setup(plan, model, cfg, torch.device("cpu"), seed=5, rows=(2, 4), local=local)
    setup.close()
    if hasattr(setup, "gsm"):
        model = setup.gsm._module
    after = model.state_dict()
    for k, v in before.items():  # BN statistics and affine, every conv, the other head rows: bit-identical
        if k in ("last.weight", "last.bias"):
            assert torch.equal(v[:2], after[k][:2]) and torch.equal(v[4:], after[k][4:]), k
            assert not torch.equal(v[2:4], after[k][2:4]), k
        else:
            assert torch.equal(v, after[k]), k
    # the new rows follow the rule from the (noiseless at epsilon = inf) release of the frozen model's features
    feats = penultimate_features(copy.deepcopy(base_learner.model), local.images, local.normalize)
    head = copy.deepcopy(base_learner.model.get_classifier())
    init_rows_from_means(head, 2, release_class_means(feats, labels - 2, 2, 50.0, 0.0, torch.Generator()).means)
    same = torch.allclose(after["last.weight"][2:4], head.weight[2:4], atol=1e-5)
    assert same == (epsilon == math.inf)  # noise moved the private rows
    entry = setup.ledger_fields()["mean_init"]
    assert entry["clip"] == 50.0 and entry["l2_sensitivity"] == pytest.approx(50.0 * math.sqrt(2))
    assert entry["noise_multiplier"] == plan.release_noise_multiplier and (entry["noise_multiplier"] > 0) == (epsilon < math.inf)


def test_noiseless_mean_init_separates_the_new_classes(base_learner):
    """Before any DP-SGD step the new rows already tell the update's two classes apart on their own images."""
    pc = PrivacyConfig(**{**FAST, "target_epsilon": math.inf})  # clipping norm from dreamed features (public)
    model, plan, local, labels = _setup_for(base_learner, pc)
    setup = dp.make_setup(plan, model, plan.train_config(base_learner.config.later_tasks), torch.device("cpu"), seed=5,
                          rows=(2, 4), local=local)
    setup.close()
    assert setup.release is not None and setup.release.clip > 0
    logits = model.forward_head(penultimate_features(model, local.images, local.normalize))[:, 2:4]
    assert (logits.argmax(1) + 2 == labels).float().mean() >= 0.9


def test_mean_init_without_a_generator_statistics_or_clip_is_refused_before_training():
    learner = Learner(tiny_config("finetune", class_statistics=False))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    state = {k: v.clone() for k, v in learner.model.state_dict().items()}
    with pytest.raises(PrivacyError, match="mean_init_clip"):
        learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), privacy=PrivacyConfig(**FAST), show_progress=False)
    assert learner.tasks_learned == 1 and all(torch.equal(v, learner.model.state_dict()[k]) for k, v in state.items())
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                                    privacy=PrivacyConfig(**FAST, mean_init_clip=20.0, mean_init_rule="nearest_mean"))
    assert rep.privacy["mean_init"]["clip"] == 20.0 and rep.privacy["mean_init"]["public_inputs"] == {"clip": "set"}


def test_lda_head_by_hand():
    from abd_edge.privacy.mean_init import lda_head

    head = torch.nn.Linear(2, 4)
    with torch.no_grad():
        head.weight[:2] = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # old rows: mean norm 3.5
    before = copy.deepcopy(head)
    dreams = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # old means [2, 0], [0, 2]
    labels = torch.tensor([0, 0, 1, 1])  # within-class covariance diag(0.5, 0.5): shrinking to trace/d * I keeps it
    scale = lda_head(head, 2, torch.tensor([[2.0, 2.0]]), dreams=(dreams, labels), shrinkage=0.1, min_dreams=2)
    s = 3.5 / 4.0  # P = 2 I: old rows [4, 0], [0, 4] (norm 4), new row [4, 4]
    assert scale == pytest.approx(s)
    assert torch.allclose(head.weight[:3], s * torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 4.0]]))
    assert torch.allclose(head.bias[:3], s * torch.tensor([-4.0, -4.0, -8.0]))  # -mu' P mu / 2
    assert torch.equal(head.weight[3], before.weight[3]) and torch.equal(head.bias[3], before.bias[3])
    # an old class with too few dreams: no rule, head untouched
    untouched = copy.deepcopy(before)
    assert lda_head(untouched, 2, torch.tensor([[2.0, 2.0]]), dreams=(dreams, labels), min_dreams=3) is None
    assert torch.equal(untouched.weight, before.weight) and torch.equal(untouched.bias, before.bias)
    # a noisy new mean (error variance 0.5 per coordinate): ridge 0.1 * 0.5 + 0.5, so cov = 0.45 + 0.55 = I and P = I;
    # its quadratic term is debiased by tau^2 tr(P) = 0.5 * 2: bias -(8 - 1) / 2 instead of -8 / 2
    noisy = copy.deepcopy(before)
    scale = lda_head(noisy, 2, torch.tensor([[2.0, 2.0]]), torch.tensor([0.5]), dreams=(dreams, labels), shrinkage=0.1, min_dreams=2)
    assert scale == pytest.approx(3.5 / 2.0)
    assert torch.allclose(noisy.weight[:3], scale * torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
    assert torch.allclose(noisy.bias[:3], scale * torch.tensor([-2.0, -2.0, -3.5]))


class _BaseImageDreams(torch.nn.Module):
    """A stand-in generator whose 'dreams' are the base task's images (public here), both base classes present."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        x, _ = make_task([0, 1], seed=1)
        self.images = learner._state.normalizer(x.float() / 255)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.images[torch.randint(0, self.images.shape[0], (n,), generator=generator)]


def test_lda_old_rows_depend_on_public_dreams_only(base_learner):
    """Two different local datasets: the same old rows (dreams + released model), different new rows, BN untouched."""
    pc = PrivacyConfig(**{**FAST, "target_epsilon": 3.0, "mean_init_rule": "lda"})
    heads = []
    for seed in (2, 4):
        model, plan, local, labels = _setup_for(base_learner, pc)
        local.dreams = _BaseImageDreams(base_learner)  # the tiny learner's 3-step generator dreams one class only
        if seed == 4:
            local.images = make_task([2, 3], n_per_class=30, seed=4)[0]
        before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("last.")}
        setup = dp.make_setup(plan, model, plan.train_config(base_learner.config.later_tasks), torch.device("cpu"),
                              seed=5, rows=(2, 4), local=local)
        setup.close()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        heads.append(copy.deepcopy(model.get_classifier()))
    a, b = heads
    assert torch.equal(a.weight[:2], b.weight[:2]) and torch.equal(a.bias[:2], b.bias[:2])
    assert not torch.equal(a.weight[2:4], b.weight[2:4])
    assert not torch.equal(a.weight[:2], base_learner.model.get_classifier().weight[:2])  # the old rows were re-set


def test_released_means_are_reused_only_in_the_same_backbone(base_learner):
    from abd_edge.privacy.mean_init import backbone_fingerprint, known_class_means, lda_head

    model = copy.deepcopy(base_learner.model)
    entry = {"mean_init": {"classes": [2, 3], "noisy_means": [[1.0] * 64, [2.0] * 64], "noisy_counts": [10.0, 0.5],
                           "noise_multiplier": 2.0, "l2_sensitivity": 3.0, "backbone_sha256": backbone_fingerprint(model)}}
    with torch.no_grad():
        model.get_classifier().weight.add_(1.0)  # the head is not part of the features
    known = known_class_means([{"private": False}, entry], model)
    assert sorted(known) == [2, 3] and torch.equal(known[3][0], torch.full((64,), 2.0))
    assert known[2][1] == pytest.approx((2.0 * 3.0 / 10) ** 2) and known[3][1] == pytest.approx(36.0)  # (std / max(1, count))^2
    model.bn1.running_mean.add_(1e-3)  # a non-private update moved the features: stale means are not reused
    assert known_class_means([entry], model) == {}
    # lda_head takes a known old mean instead of the dreamed one (class 0 here, no dreams needed for it)
    head = torch.nn.Linear(2, 3)
    dreams, labels = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 1.0], [0.0, 3.0]]), torch.tensor([1, 1, 1, 1])
    assert lda_head(copy.deepcopy(head), 2, torch.tensor([[2.0, 2.0]]), dreams=(dreams, labels), min_dreams=1, shrinkage=0.1) is None
    assert lda_head(head, 2, torch.tensor([[2.0, 2.0]]), dreams=(dreams, labels), min_dreams=1, shrinkage=0.1,
                    known={0: (torch.tensor([4.0, 0.0]), 0.0)}) is not None
    # covariance from the class-1 dreams: diag(0, 1) shrunk by 0.1 toward 0.5 I: diag(0.05, 0.95)
    w = torch.stack([torch.tensor([4.0, 0.0]) / 0.05, torch.tensor([0.0, 2.0]) / 0.95])
    assert torch.allclose(head.weight[:2] / head.weight[:2].norm(dim=1, keepdim=True), w / w.norm(dim=1, keepdim=True))


def test_a_private_update_records_its_released_means_for_the_next(base_learner):
    learner = copy.deepcopy(base_learner)
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                                    privacy=PrivacyConfig(**FAST))
    rel = rep.privacy["mean_init"]
    assert rel["classes"] == [2, 3] and len(rel["noisy_means"]) == 2 and len(rel["noisy_means"][0]) == 64
    from abd_edge.privacy.mean_init import known_class_means

    assert sorted(known_class_means(learner.privacy_ledger, learner.model)) == [2, 3]  # the backbone stayed frozen


def test_release_only_update_spends_the_whole_budget_on_the_release(base_learner):
    from opacus.accountants import RDPAccountant

    learner = copy.deepcopy(base_learner)
    before = {k: v.clone() for k, v in learner.model.state_dict().items() if not k.startswith("last.")}
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), show_progress=False,
                                    privacy=PrivacyConfig(**{**FAST, "target_epsilon": 3.0, "mean_init_fraction": 1.0}))
    e = rep.privacy
    assert e["private"] and e["steps"] == 0 and e["noise_multiplier"] == 0.0
    acc = RDPAccountant()
    acc.history = [(e["mean_init"]["noise_multiplier"], 1.0, 1)]
    assert e["epsilon"] == pytest.approx(acc.get_epsilon(delta=e["delta"]), rel=1e-9) and 2.95 <= e["epsilon"] <= 3.0
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in before.items())  # BN and convs bit-identical
    assert not torch.equal(learner.model.get_classifier().weight[2:4], base_learner.model.get_classifier().weight[2:4])


def test_without_a_generator_the_class_statistics_serve_the_release():
    """A learner with no generator (finetune) builds the LDA head from its base task's statistics: no dreams needed."""
    learner = Learner(tiny_config("finetune"))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    stats = learner._state.class_statistics
    assert stats is not None and stats.rows == (0, 1)
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), privacy=PrivacyConfig(**FAST), show_progress=False)
    rel = rep.privacy["mean_init"]
    assert rel["public_inputs"] == {"statistics": [0, 1], "releases": [], "dreams": [], "covariance": "statistics",
                                    "clip": "statistics"}
    assert rel["clip"] == pytest.approx(stats.norm_quantile)
    # a private update adds no statistics of its local images: the kept ones are the base task's, bit for bit
    after = learner._state.class_statistics
    assert after is not None and after.rows == (0, 1) and torch.equal(after.scatter, stats.scatter)


def test_lda_head_from_class_statistics_by_hand():
    """Old means and the covariance from statistics: no dreams read (None passed), same rule as from dreams."""
    from abd_edge.privacy.mean_init import lda_head

    head = torch.nn.Linear(2, 4)
    with torch.no_grad():
        head.weight[:2] = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # old rows: mean norm 3.5
    known = {0: (torch.tensor([2.0, 0.0]), 0.0), 1: (torch.tensor([0.0, 2.0]), 0.0)}
    scale = lda_head(head, 2, torch.tensor([[2.0, 2.0]]), known=known, covariance=torch.eye(2) * 0.5, shrinkage=0.1)
    s = 3.5 / 4.0  # P = 2 I as in test_lda_head_by_hand
    assert scale == pytest.approx(s)
    assert torch.allclose(head.weight[:3], s * torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 4.0]]))
    assert torch.allclose(head.bias[:3], s * torch.tensor([-4.0, -4.0, -8.0]))
    # without a covariance (and no dreams) there is no rule
    assert lda_head(torch.nn.Linear(2, 4), 2, torch.tensor([[2.0, 2.0]]), known=known) is None


def test_a_release_only_update_runs_no_loop_and_restores_the_model(base_learner, tmp_path):
    """Nothing trains: no optimizer, no epochs, every requires_grad flag back as it was; a loaded learner
    without a saved Adam state builds one only when it dreams."""
    learner = copy.deepcopy(base_learner)
    release_only = PrivacyConfig(**{**FAST, "mean_init_fraction": 1.0})
    rep = learner.learn_new_classes(make_task([2, 3], n_per_class=30, seed=2), privacy=release_only, show_progress=False)
    assert rep.privacy["steps"] == 0 and rep.epoch_losses == [] and rep.train_seconds == 0.0
    assert all(p.requires_grad for p in learner.model.parameters())
    loaded = Learner.load(learner.save(tmp_path / "l", keep_optimizer=False))
    assert loaded._state.generator_opt is None  # no Adam (and no torch._dynamo import) until a call dreams
    loaded.learn_new_classes(make_task([4, 5], n_per_class=30, seed=4), privacy=release_only, show_progress=False, dream=False)
    assert loaded._state.generator_opt is None
    loaded.learn_new_classes(make_task([6, 7], n_per_class=30, seed=6), show_progress=False)  # dreams: builds its Adam
    assert loaded._state.generator_opt is not None
