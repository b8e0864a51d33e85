"""Batched training-time augmentation on the training device.

The reference applies torchvision transforms image by image in DataLoader
workers (PIL crop, flip, ColorJitter). On a 2-core device that per-image work
competes with training for the same cores, so here the whole batch is
augmented with a handful of tensor ops: one gather for every crop, one
``where`` for every flip, two broadcasts for the colour jitter.
"""

from __future__ import annotations

import torch

from ..config import AugmentConfig


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 -> float32 0..1."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        # Python-float weights: a weight tensor built from a list here was copied to the GPU on every call, and
        # that copy waited for the GPU to finish its queue (2 synchronisations per training step on an H200).
        return x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    return x.mean(1, keepdim=True)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator | None) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per image."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=gen)
    ox = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=gen)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # n,h,1
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # n,1,w
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (n, h, w, c).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, gen: torch.Generator | None) -> torch.Tensor:
    """torchvision ColorJitter(brightness, contrast) semantics, batched.

    torchvision draws the order of its sub-transforms at random on each call;
    we draw it per image (brightness first or contrast first) and clamp to
    [0, 1] after each, as it does.
    """
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    b = 1.0 + (torch.rand(shape, device=x.device, generator=gen) * 2 - 1) * brightness
    c = 1.0 + (torch.rand(shape, device=x.device, generator=gen) * 2 - 1) * contrast
    b_first = torch.rand(shape, device=x.device, generator=gen) < 0.5

    def bright(t: torch.Tensor) -> torch.Tensor:
        return (t * b).clamp_(0, 1)

    def contr(t: torch.Tensor) -> torch.Tensor:
        mean = _grey(t).mean(dim=(1, 2, 3), keepdim=True)
        return (c * t + (1 - c) * mean).clamp_(0, 1)

    if brightness == 0 and contrast == 0:
        return x
    return torch.where(b_first, contr(bright(x)), bright(contr(x)))


class BatchAugment:
    """Applies the configured augmentation to a float batch in [0, 1]."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        if cfg.brightness > 0 or cfg.contrast > 0:
            x = colour_jitter(x, cfg.brightness, cfg.contrast, gen)
        if cfg.flip:
            x = random_flip(x, gen)
        return random_crop(x, cfg.crop_padding, gen)
