"""The ABD generator: latent vector -> image in the classifier's input space.

The final BatchNorm without affine parameters re-standardises every output
channel of each batch, which is what lets tanh images land in the
classifier's *normalised* input space without knowing the dataset's mean and
standard deviation. The middle BNs use eps=0.8 exactly as the reference
implementation does (it passes 0.8 positionally where ``BatchNorm2d`` takes
eps, probably meaning momentum); we keep it because the published numbers
were produced with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _start_size(img_size: int) -> tuple[int, int]:
    """Spatial size of the first feature map and the number of x2 upsamplings."""
    if img_size >= 32:
        stages = math.log2(img_size / 8)
        if stages != int(stages):
            raise ValueError(f"generator needs an image size of 8*2^k for sizes >= 32, got {img_size}")
        return 8, int(stages)
    if img_size % 4 != 0 or img_size < 4:
        raise ValueError(f"generator needs an image size divisible by 4, got {img_size}")
    return img_size // 4, 2


class Generator(nn.Module):
    """DCGAN-style generator of the ABD paper (for 32x32: 8x8 -> 16 -> 32).

    ``width`` is the channel count of the first feature map (128 in the
    paper); ``zdim`` the latent size (1000 in the paper). Both are exposed
    because the first Linear layer (zdim * width * s * s weights, 8.2 M in
    the paper's setting) dominates the size of a deployment bundle.
    """

    def __init__(self, zdim: int = 1000, img_size: int = 32, channels: int = 3, width: int = 128) -> None:
        super().__init__()
        self.zdim = zdim
        self.img_size = img_size
        self.channels = channels
        self.width = width
        self.init_size, n_up = _start_size(img_size)
        self.l1 = nn.Linear(zdim, width * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_ch = width
        for i in range(n_up):
            out_ch = width if i < n_up - 1 else width // 2
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(in_ch, out_ch, 3, 1, 1),
                nn.BatchNorm2d(out_ch, eps=0.8),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            in_ch = out_ch
        layers += [
            nn.Conv2d(in_ch, channels, 3, 1, 1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.l1(z).view(z.shape[0], self.width, self.init_size, self.init_size)
        return self.body(self.bn0(out))

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.l1.weight.device
        return torch.randn(n, self.zdim, device=device, generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self(self.sample_latent(n, generator))
