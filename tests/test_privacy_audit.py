"""Audit math pinned against hand-computed values, and the audits run on a tiny learner."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from abd_edge import Learner
from abd_edge.data import LabeledImages
from abd_edge.privacy import audit

from conftest import make_task, tiny_config


def test_auc_counts_ties_half():
    assert audit.roc_auc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx(3.5 / 4)
    assert audit.roc_auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0


def test_tpr_at_fpr_allows_that_fraction_of_non_members_above_the_threshold():
    neg = np.arange(100, dtype=float)  # 1% FPR: one non-member (99) may exceed the threshold 98
    assert audit.tpr_at_fpr(np.array([99.0, 98.5, 50.0]), neg, 0.01) == pytest.approx(2 / 3)
    assert audit.tpr_at_fpr(np.array([99.5]), np.arange(10, dtype=float), 0.01) == 1.0  # k=0: above the maximum


def test_logit_confidence_is_log_odds_of_the_true_class():
    z = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(1) / (math.exp(1) + 1 + math.exp(-1))
    got = audit.logit_confidence(z, np.array([0, 1]))
    assert got == pytest.approx([math.log(p0 / (1 - p0)), math.log(p1 / (1 - p1))])
    assert audit.cross_entropy(z, np.array([0, 1])) == pytest.approx([-math.log(p0), -math.log(p1)])


def test_lira_scores_members_by_likelihood_ratio():
    rng = np.random.default_rng(0)
    n, k = 40, 8
    shadow_in = rng.random((k, n)) < 0.5
    shadow = np.where(shadow_in, 3.0, 0.0) + rng.normal(0, 0.3, (k, n))
    target = np.r_[np.full(n // 2, 3.0), np.zeros(n // 2)]  # first half were members of the target
    s = audit.lira_scores(target, shadow, shadow_in)
    assert audit.roc_auc(s[: n // 2], s[n // 2 :]) == 1.0


def test_persistence_scan_finds_raw_bytes(tmp_path):
    x, _ = make_task([0], n_per_class=3, seed=5)
    (tmp_path / "clean.bin").write_bytes(b"\x00" * 1000)
    assert audit.persistence_scan([tmp_path], x) == []
    (tmp_path / "leak.bin").write_bytes(b"head" + x[1].permute(1, 2, 0).contiguous().numpy().tobytes() + b"tail")
    assert audit.persistence_scan([tmp_path], x) == [str(tmp_path / "leak.bin")]


@pytest.fixture(scope="module")
def updated():
    torch.set_num_threads(1)
    base = Learner(tiny_config("abd"))
    base.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    x, y = make_task([2, 3], n_per_class=24, seed=2)
    data = LabeledImages(x, y, {})
    members, non_members = data.subset(list(range(0, 48, 2))), data.subset(list(range(1, 48, 2)))
    target = copy.deepcopy(base)
    target.learn_new_classes(members, show_progress=False)
    return base, target, members, non_members


def test_membership_audit_reports_both_attacks(updated):
    base, target, members, non_members = updated
    res = audit.membership_audit(target, members, non_members, base=base, shadows=2)
    names = [a["attack"] for a in res["attacks"]]
    assert names == ["loss_threshold", "lira_2_shadows"]
    for a in res["attacks"]:
        assert 0.0 <= a["auc"] <= 1.0 and 0.0 <= a["tpr_at_1pct_fpr"] <= 1.0
        assert a["n_members"] == 24 and a["n_non_members"] == 24


def test_dream_memorisation_compares_train_and_test_and_draws_pairs(updated, tmp_path):
    _, target, members, non_members = updated
    res = audit.dream_memorisation(target, members, non_members, n_dreams=16, png=tmp_path / "pairs.png", pairs=4)
    assert res["n_train"] == res["n_test"] == 24 and res["n_dreams"] >= 8
    for space in ("pixel", "feature"):
        r = res[space]
        assert r["median_nn_dist_to_train"] > 0 and 0 <= r["fraction_closer_to_train"] <= 1
    assert (tmp_path / "pairs.png").stat().st_size > 1000
