"""Model factories in a small registry (timm-style: a name -> a function).

Backbones are built with the data's channel count and the head's capacity;
generators with the data's image size and channels. Registering a new family
is one decorator, and configs refer to models by name so that a saved
learner records how to rebuild itself.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError
from .generator import Generator
from .resnet import CifarResNet

BackboneFactory = Callable[..., CifarResNet]
GeneratorFactory = Callable[..., Generator]

_BACKBONES: dict[str, BackboneFactory] = {}
_GENERATORS: dict[str, GeneratorFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def wrap(fn: BackboneFactory) -> BackboneFactory:
        _BACKBONES[name] = fn
        return fn

    return wrap


def register_generator(name: str) -> Callable[[GeneratorFactory], GeneratorFactory]:
    def wrap(fn: GeneratorFactory) -> GeneratorFactory:
        _GENERATORS[name] = fn
        return fn

    return wrap


@register_backbone("resnet20")
def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


@register_backbone("resnet32")
def resnet32(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels)


@register_backbone("resnet56")
def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels)


@register_generator("abd")
def abd_generator(img_size: int, channels: int = 3) -> Generator:
    """The paper's generator: latent 1000, 128 channels at the first map."""
    return Generator(zdim=1000, img_size=img_size, channels=channels, width=128)


@register_generator("abd_compact")
def abd_compact_generator(img_size: int, channels: int = 3) -> Generator:
    """A device-sized variant: latent 128, 64 channels at the first map (about 14x fewer parameters)."""
    return Generator(zdim=128, img_size=img_size, channels=channels, width=64)


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def generator_names() -> list[str]:
    return sorted(_GENERATORS)


def build_backbone(name: str, num_classes: int, in_channels: int) -> CifarResNet:
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; expected one of {backbone_names()}")
    return _BACKBONES[name](num_classes=num_classes, in_channels=in_channels)


def build_generator(name: str, img_size: int, channels: int) -> Generator:
    if name not in _GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; expected one of {generator_names()}")
    return _GENERATORS[name](img_size=img_size, channels=channels)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "CifarResNet",
    "Generator",
    "build_backbone",
    "build_generator",
    "backbone_names",
    "generator_names",
    "count_parameters",
    "register_backbone",
    "register_generator",
]
