"""CIFAR-style ResNets (He et al. 2016, section 4.2), the ABD classifier.

The classifier contract (timm's names): ``forward_features`` (pooled
penultimate features), ``forward_head`` (features -> logits),
``get_classifier`` (the linear head) and ``grow_head`` (more output rows,
the learned ones kept). The Learner, the losses and the private-update glue
use only these, so another backbone that provides them plugs in.
``forward_with_features`` returns logits and features from one pass because
the ABD losses need both: recomputing features costs a second pass and, in
train mode, a second update of the BN running statistics that dreaming later
inverts.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


#: Rows per forward pass of an inference-only pass over many images (features, predictions, accuracy). Why 128, not
#: 512: on the cifar10 device update a pass at 512 rows of 32x32 images raised the process's peak RSS by about 220 MiB
#: more (1,243 against 1,025 MiB for a class-mean-head update of 10,000 images, 1 thread), and 128 rows already keep
#: two cores busy.
EVAL_BATCH = 128


@torch.no_grad()
def eval_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH,
    memory_format: torch.memory_format = torch.contiguous_format,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Float32 ``forward_features`` of ``images`` in eval mode, batch by batch; the model is left in the mode it came in.

    Eval mode: BatchNorm uses its running statistics and never updates them.
    ``prepare`` turns one batch into model input (e.g. uint8 -> normalised);
    without it ``images`` already are model input.
    """
    was_training = model.training
    model.eval()
    try:
        out = []
        for s in range(0, images.shape[0], batch_size):
            x = images[s : s + batch_size]
            x = prepare(x) if prepare is not None else x
            out.append(model.forward_features(x.contiguous(memory_format=memory_format)).float())  # type: ignore[operator]
    finally:
        model.train(was_training)
    return torch.cat(out)


class ZeroPadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample space, zero-pad channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem, three stages of basic blocks (16, 32, 64 wide), GAP, linear head.

    ``num_classes`` is the head's capacity: every class the learner may ever
    see. Only the logits of classes seen so far are used by the losses and by
    prediction; the unused rows simply never receive gradient from a target.
    """

    def __init__(self, depth: int = 32, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = in_planes
        self.last = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        nn.init.zeros_(self.last.bias)

    @property
    def num_classes(self) -> int:
        return self.last.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, globally average-pooled: (N, feature_dim)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.last(features)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penultimate features)`` from one pass."""
        feats = self.forward_features(x)
        return self.forward_head(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.last

    def grow_head(self, capacity: int) -> None:
        """Widen the head to ``capacity`` outputs: learned rows copied, new rows He-initialised, new biases 0.

        The old rows keep their values exactly, so every class learned so far
        scores as before until training moves it.
        """
        old = self.last
        if capacity < old.out_features:
            raise ValueError(f"grow_head({capacity}): the head already has {old.out_features} outputs")
        new = nn.Linear(old.in_features, capacity).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.bias.zero_()
            nn.init.kaiming_normal_(new.weight[old.out_features :])
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.last = new
