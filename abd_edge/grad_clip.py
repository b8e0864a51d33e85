"""Global gradient-norm clipping installed on a model's parameters, around any training loop.

Why it exists: on small tasks (a few hundred images of two classes) the
first optimizer steps of a freshly initialised or freshly grown network
produce gradients tens of times larger than later ones. At lr 0.1 they blow
the weights up: the digits classifier after one two-class task gave logits
of about 50 and penultimate features of norm 19. Everything downstream
scales with that: ABD's feature distillation started at 170-375 instead of
below 1, its gradient swamped the cross-entropy of the new classes, and the
update ended with the old classes forgotten (seed 0: 9% on the old classes,
37% over four). Clipping the global norm at 1 keeps those first steps sane
(94% over four classes with the same budget); see auto_config.py for when
it is on.

It is installed with post-accumulate-grad hooks rather than as a line in the
training loop so that the loop stays the one written in ``engine.py``.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["GlobalNormClip"]


class GlobalNormClip:
    """Context manager: after each backward pass, scale all gradients so their global L2 norm is <= ``max_norm``.

    The clip runs when the last parameter's gradient of a backward pass has
    been accumulated. A parameter seen twice before all were seen starts a
    new round (a pass that left some parameter without a gradient is then
    not clipped, which is the safe direction).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], max_norm: float | None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.max_norm = max_norm
        self._seen: set[int] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.clipped_steps = 0
        self.steps = 0

    def _hook(self, p: torch.Tensor) -> None:
        key = id(p)
        if key in self._seen:
            self._seen = set()
        self._seen.add(key)
        if len(self._seen) == len(self.params):
            self._seen = set()
            self.steps += 1
            norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.max_norm))  # type: ignore[arg-type]
            if float(norm) > float(self.max_norm):  # type: ignore[arg-type]
                self.clipped_steps += 1

    def __enter__(self) -> "GlobalNormClip":
        if self.max_norm is not None:
            self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen = set()
