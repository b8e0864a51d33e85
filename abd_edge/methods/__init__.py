"""Methods as losses: ``build_method(name, loss_cfg)``."""

from __future__ import annotations

from ..config import METHODS, LossConfig
from ..errors import ConfigError
from .abd import ABD
from .base import Method, StepOutputs, TaskContext
from .baselines import DeepInversion, FineTune, LwF, LwFMC

_METHODS: dict[str, type[Method]] = {
    "abd": ABD,
    "deepinversion": DeepInversion,
    "lwf": LwF,
    "lwf_mc": LwFMC,
    "finetune": FineTune,
}
assert tuple(_METHODS) == METHODS


def build_method(name: str, cfg: LossConfig) -> Method:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of {list(_METHODS)}")
    return _METHODS[name](cfg)


__all__ = ["Method", "StepOutputs", "TaskContext", "build_method", "ABD", "DeepInversion", "FineTune", "LwF", "LwFMC"]
