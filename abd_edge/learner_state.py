"""What a Learner has learned, as one value: swapped in whole when a call succeeds, saved and loaded whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .class_statistics import ClassStatistics
from .config import LearnerConfig
from .engine import Normalizer
from .models import build_backbone, build_generator
from .models.generator import Generator
from .models.resnet import CifarResNet
from .registry import ClassRegistry


@dataclass
class LearnerState:
    """Everything a ``learn_new_classes`` call may change (checkpoint.py writes and reads exactly this)."""

    registry: ClassRegistry
    model: CifarResNet | None = None
    generator: Generator | None = None
    generator_opt: torch.optim.Optimizer | None = None
    normalizer: Normalizer | None = None
    input_shape: tuple[int, int, int] | None = None  # (C, H, W)
    tasks_learned: int = 0
    class_statistics: ClassStatistics | None = None  # of non-private tasks' data, in the current backbone


def build_models(
    config: LearnerConfig, *, replay: bool, channels: int, size: int, capacity: int,
    device: torch.device, memory_format: torch.memory_format,
) -> tuple[CifarResNet, Generator | None]:
    """A fresh classifier (and generator, for a method that replays), initialised from ``config.seed``.

    The first task builds them to train; loading builds them to receive saved weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_backbone(config.backbone, capacity, channels)
        gen = build_generator(config.generator, size, channels) if replay else None
    model = model.to(device, memory_format=memory_format)
    if gen is not None:
        # channels_last makes the generator's 128-channel convolutions about 20% faster on CPU
        gen = gen.to(device, memory_format=memory_format)
    return model, gen


def generator_optimizer(generator: Generator, lr: float, state: dict[str, Any] | None = None) -> torch.optim.Adam:
    """The generator's Adam, fused where torch has a fused kernel for its device (CPU and CUDA, torch >= 2.4).

    ``state``: an Adam state dict to continue from (a saved learner's, or the
    last task's); its moments are given their weights' memory layout
    (:func:`align_state_to_parameters`), which the fused kernel needs.

    Why fused: one kernel updates each parameter in place, without the
    foreach implementation's temporaries the size of all parameters. For
    the paper's 8.4 M-weight generator that is about 60 MiB less peak
    memory while dreaming (227 against 164 MiB above the start over five
    steps on 2 CPU cores) and a faster step, which a device update under a
    memory cap needs. Elsewhere (a device without the kernel) the default.
    """
    try:
        optimizer = torch.optim.Adam(generator.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    if state is not None:
        optimizer.load_state_dict(state)
        align_state_to_parameters(optimizer)
    return optimizer


def align_state_to_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout, in place.

    Why: the fused Adam kernel pairs a parameter's elements with its
    moments' by position in memory, so a moment stored contiguous (as a
    saved checkpoint holds it) for a channels_last weight updates the wrong
    elements (torch 2.13-2.14 on CPU: 0.34 of error after one step of a
    3x3 kernel). :func:`generator_optimizer` calls it after loading a state.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
