"""Batched augmentation (abd_edge/data/augment.py): the math, and no host-device copies per call."""

from __future__ import annotations

import torch

from abd_edge.config import AugmentConfig
from abd_edge.data.augment import BatchAugment, _grey, random_crop


def test_grey_is_the_luma_weighting():
    x = torch.tensor([[[[1.0]], [[0.5]], [[0.0]]]])  # one 1x1 RGB pixel
    assert torch.allclose(_grey(x), torch.tensor([[[[0.299 + 0.5 * 0.587]]]]))
    one = torch.rand(2, 1, 4, 4)
    assert torch.equal(_grey(one), one)


def test_augmenting_builds_no_tensor_from_python_data(monkeypatch):
    """A tensor made from a list on every call is a host-to-GPU copy that waits for the GPU (2 per step on an H200)."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.tensor called while augmenting a batch")

    augment = BatchAugment(AugmentConfig(crop_padding=4, flip=True, brightness=0.3, contrast=0.3))
    x = torch.rand(8, 3, 12, 12)
    monkeypatch.setattr(torch, "tensor", refuse)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.rand(5, 3, 6, 6)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(5):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
