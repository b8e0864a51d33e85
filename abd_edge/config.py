"""Configuration dataclasses. Defaults are the paper's CIFAR-100 recipe.

Two presets exist: :meth:`LearnerConfig.paper` (the defaults, 250 epochs and
10,000 dreaming iterations per task) and :meth:`LearnerConfig.short_budget`,
our documented deviation for the few-epoch budgets a device update runs on
(see docs/RECIPES.md for why each change was made).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import ConfigError
from .memory_budget import check_max_memory_mb

#: every mode torch.compile accepts for ``LearnerConfig.compile_mode`` (None: its default)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the class-balance term of dreaming: the paper's 1 - H/log K, or KL from uniform in bits (dreaming.class_balance_loss)
BalanceUnits = Literal["fraction", "bits"]
BALANCE_UNITS: tuple[str, ...] = get_args(BalanceUnits)

METHODS = ("abd", "deepinversion", "lwf", "lwf_mc", "finetune")
Schedule = Literal["step", "cosine"]
# A setting left "auto" is settled by the learner from the data it is given
# (abd_edge/auto_config.py); an explicit value always wins.
AUTO = "auto"
Auto = Literal["auto"]


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def _check_micro_batch(value: Any, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
        raise ConfigError(f"{where} must be None (whole batches) or an int >= 2 (BatchNorm needs 2), got {value!r}")


@dataclass
class TrainConfig:
    """SGD schedule of one learning phase (the first task, or a later one)."""

    epochs: int = 250
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    batch_size: int | Auto = AUTO  # auto: enough steps per epoch for the task's image count (128 on CIFAR)
    schedule: Schedule = "step"
    milestones: tuple[int, ...] = (100, 150, 200)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    # Global gradient-norm clip (engine.TrainingSetup.step); None: off (the paper). auto: on for small tasks (auto_config.py).
    grad_clip_norm: float | None | Auto = AUTO
    # Rows per forward/backward pass; a step accumulates the gradients of its micro-batches (same effective
    # batch, less activation memory: a device's memory budget sets it). None: the whole batch at once.
    micro_batch: int | None = None

    def validate(self, where: str) -> None:
        if self.epochs < 1:
            raise ConfigError(f"{where}.epochs must be >= 1, got {self.epochs}")
        _check_micro_batch(self.micro_batch, f"{where}.micro_batch")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{where}.lr must be a positive finite number, got {self.lr}")
        if not _is_auto(self.batch_size) and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2
        ):
            raise ConfigError(
                f"{where}.batch_size must be >= 2 (an int; BatchNorm needs 2) or 'auto', got {self.batch_size!r}"
            )
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"{where}.schedule must be 'step' or 'cosine', got {self.schedule!r}")
        g = self.grad_clip_norm
        if not (g is None or _is_auto(g)) and (
            isinstance(g, bool) or not isinstance(g, (int, float)) or not (g > 0 and math.isfinite(g))
        ):
            raise ConfigError(f"{where}.grad_clip_norm must be a positive number, None or 'auto', got {g!r}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"{where}.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.weight_decay < 0 or not (0 <= self.momentum < 1):
            raise ConfigError(
                f"{where}: weight_decay must be >= 0 and momentum in [0, 1), got "
                f"{self.weight_decay} and {self.momentum}"
            )


@dataclass
class DreamConfig:
    """Generator training by model inversion (ABD section 3.2, DeepInversion losses)."""

    iterations: int = 10_000
    batch_size: int | Auto = AUTO  # auto: settled from the image size at the first task (128 on CIFAR)
    lr: float = 1e-3
    content_weight: float = 1.0
    content_temperature: float = 1000.0
    balance_weight: float = 1.0
    # "fraction": the paper's class-balance term, 1 - H(p) / log K (at most 1); "bits": KL(p || uniform) / log 2,
    # the same at K = 2 and growing to log2 K with the classes seen (dreaming.class_balance_loss says why).
    balance_units: BalanceUnits = "fraction"
    bn_weight: float = 50.0
    smooth_weight: float = 1e-3
    blur_sigma: float = 1.0
    blur_size: int = 5
    keep_optimizer: bool = True
    # Images per generator forward/backward pass, gradients accumulated over the batch (see TrainConfig).
    # The batch-level terms (BN statistics, class balance) are then measured per micro-batch.
    micro_batch: int | None = None
    # A cap on the process's resident memory while dreaming, in MiB (None: none). Dreaming then re-plans its
    # micro-batch from what the process holds when dreaming starts (memory_budget.dream_micro_batch_at_start),
    # never above micro_batch: what training left behind is known only then. A device update sets it from
    # DeviceBudget.max_memory_mb.
    max_memory_mb: float | None = None

    def validate(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"dream.iterations must be >= 0, got {self.iterations}")
        _check_micro_batch(self.micro_batch, "dream.micro_batch")
        try:
            check_max_memory_mb(self.max_memory_mb)
        except ConfigError as exc:
            raise ConfigError(f"dream.{exc}") from None
        if not _is_auto(self.batch_size) and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2
        ):
            raise ConfigError(f"dream.batch_size must be >= 2 (an int) or 'auto', got {self.batch_size!r}")
        if self.blur_size % 2 != 1:
            raise ConfigError(f"dream.blur_size must be odd, got {self.blur_size}")
        if self.balance_units not in BALANCE_UNITS:
            raise ConfigError(f"dream.balance_units must be one of {BALANCE_UNITS}, got {self.balance_units!r}")


@dataclass
class AugmentConfig:
    """Real-data augmentation of the reference (synthetic images are never augmented).

    Every field defaults to "auto": the learner settles it from the image size
    and channels at its first task (the reference's values on 32x32 RGB: crop
    padding 4, flips, colour jitter 63/255 and 0.8; see auto_config.py).
    """

    crop_padding: int | Auto = AUTO
    flip: bool | Auto = AUTO
    brightness: float | Auto = AUTO
    contrast: float | Auto = AUTO

    def validate(self) -> None:
        if not _is_auto(self.crop_padding) and (
            isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0
        ):
            raise ConfigError(f"augment.crop_padding must be an int >= 0 or 'auto', got {self.crop_padding!r}")
        if not _is_auto(self.flip) and not isinstance(self.flip, bool):
            raise ConfigError(f"augment.flip must be true, false or 'auto', got {self.flip!r}")
        for name in ("brightness", "contrast"):
            v = getattr(self, name)
            if _is_auto(v):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"augment.{name} must be in [0, 1) or 'auto', got {v!r}")

    @property
    def is_resolved(self) -> bool:
        return not any(_is_auto(getattr(self, f.name)) for f in dataclasses.fields(self))


@dataclass
class LossConfig:
    """Weights of the method losses (ABD: mu; LwF/DeepInversion: KD)."""

    feature_kd_weight: float = 0.1  # ABD's mu
    kd_weight: float = 1.0
    kd_temperature: float = 2.0


@dataclass
class LearnerConfig:
    """Everything that defines a learner. ``LearnerConfig()`` is the paper's recipe.

    ``first_task`` trains the first call from scratch; ``later_tasks`` trains
    every incremental call. They are equal in the paper; the short-budget
    recipe lowers the later learning rate.
    """

    method: str = "abd"
    backbone: str = "resnet32"
    generator: str = "abd"
    max_classes: int = 100
    first_task: TrainConfig = field(default_factory=TrainConfig)
    later_tasks: TrainConfig = field(default_factory=TrainConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    augment: AugmentConfig | Auto = field(default_factory=AugmentConfig)  # "auto" is AugmentConfig() (all auto)
    losses: LossConfig = field(default_factory=LossConfig)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    head_balance: Literal["none", "weight_align"] = "none"
    replay_pool_batches: int = 0
    # The report's training accuracy: with class_statistics on it is over every image of the task (taken from the
    # statistics' own feature pass); without them, over a random sample of this many (None: all).
    train_eval_max_images: int | None = 2048
    time_budget_s: float | None = None
    seed: int = 0
    device: str | None = None
    # auto: bf16 autocast for training and dreaming where the hardware runs it natively (CUDA with bf16, CPUs
    # with AVX512_BF16 or AMX), fp32 elsewhere; predictions stay fp32 (they must match the exported fp32 model).
    # Digits 5x2 over 3 seeds: 69.9 +- 1.6% against 71.3 +- 1.8% in fp32 (benchmarks/results/precision-digits-seeds.json).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    # The training forward pass through torch.compile (abd_edge/compiled.py): auto = on for CUDA (kernel-launch
    # bound at batch 128), off on CPU (compiling costs more than a device update saves); falls back to eager.
    compile: bool | Auto = AUTO
    compile_backend: str = "inductor"
    # torch.compile's mode: None (its default: fused kernels), "reduce-overhead" (also CUDA graphs), ...
    compile_mode: str | None = None
    # CUDA only: deterministic cuDNN kernels, so that a seed fixes a run (compute.make_cuda_repeatable);
    # False lets cuDNN pick the fastest kernels (benchmark mode), for throughput over repeatability.
    cuda_deterministic: bool = True
    num_threads: int | None = None
    recipe: str = "paper"
    # What the learner settled from the data at its first task (auto_config.py):
    # {"image_shape": [C, H, W], "n_images": N, "settings": {dotted key: value}}.
    # Filled by the learner, saved with it, reused by every later call.
    data_settings: dict[str, Any] = field(default_factory=dict)
    # An update that classifies fewer of its own training images correctly than this did not learn its
    # new classes: LearnReport.learned_new_classes is False and a NewClassesNotLearnedWarning is raised.
    new_class_accuracy_floor: float = 0.5
    # Keep per-class feature means and the within-class covariance of every non-private task's images
    # (class_statistics.py): a later private update builds its head from them instead of from dreams
    # (cifar10 update seed 1, epsilon 8: 62.0% against 46.3%). They are aggregates of that non-private data and
    # travel with the learner and its bundles; False keeps none.
    class_statistics: bool = True

    def __post_init__(self) -> None:
        if _is_auto(self.augment):
            self.augment = AugmentConfig()
        self.validate()

    def validate(self) -> None:
        if _is_auto(self.augment):
            self.augment = AugmentConfig()
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"augment must be an AugmentConfig or 'auto', got {self.augment!r}")
        if not isinstance(self.data_settings, dict):
            raise ConfigError(f"data_settings must be a dict, got {type(self.data_settings).__name__}")
        if not isinstance(self.class_statistics, bool):
            raise ConfigError(f"class_statistics must be True or False, got {self.class_statistics!r}")
        if not 0.0 <= self.new_class_accuracy_floor <= 1.0:
            raise ConfigError(f"new_class_accuracy_floor must be in [0, 1], got {self.new_class_accuracy_floor}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; expected one of {list(METHODS)}")
        if self.max_classes < 1:
            raise ConfigError(f"max_classes must be >= 1, got {self.max_classes}")
        self.first_task.validate("first_task")
        self.later_tasks.validate("later_tasks")
        self.dream.validate()
        self.augment.validate()
        if self.head_balance not in ("none", "weight_align"):
            raise ConfigError(f"head_balance must be 'none' or 'weight_align', got {self.head_balance!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std must be given together (or both left None to use the data's)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive per channel, got {self.std}")
        if not (isinstance(self.compile, bool) or _is_auto(self.compile)):
            raise ConfigError(f"compile must be true, false or 'auto', got {self.compile!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ConfigError(f"compile_backend must be a torch.compile backend name, got {self.compile_backend!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode must be None or one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if not isinstance(self.cuda_deterministic, bool):
            raise ConfigError(f"cuda_deterministic must be true or false, got {self.cuda_deterministic!r}")
        if self.replay_pool_batches < 0:
            raise ConfigError(f"replay_pool_batches must be >= 0, got {self.replay_pool_batches}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"time_budget_s must be positive or None, got {self.time_budget_s}")

    # ----- presets -------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> "LearnerConfig":
        """The reference CIFAR-100 recipe: 250 epochs, lr steps at 100/150/200, 10k dreaming iterations."""
        return cls(**{"recipe": "paper", **overrides})

    @classmethod
    def short_budget(cls, epochs: int = 5, dream_iterations: int = 500, **overrides: Any) -> "LearnerConfig":
        """Our recipe for a few epochs per task (device updates, the cifar10-5x2 protocol).

        What changes against the paper and why (docs/RECIPES.md has the measurements):
        * the learning rate warms up linearly over the first epoch, then
          follows a cosine decay to zero, instead of 0.1 with x0.1 steps. A
          step schedule compressed into 5 epochs starts a new task at full
          rate, while the new classes' head rows are random and their
          gradients large, and then spends most of the budget at 1e-3 and
          1e-4 where nothing is learned. The reference broke on this budget
          (29% after task 2 on cifar10-5x2); warm-up + cosine at the same
          peak rate kept 71% there;
        * the generator's Adam runs at 5e-3 instead of 1e-3. The paper trains
          it for 10,000 iterations per task; with 500 (or the 40 of a device
          update) it is still far from converged at 1e-3, and its dreams are
          what every later task replays. On cifar10-5x2 (CUDA) the higher
          rate gave 42.0% final accuracy against 37.6% in the same run.
        * the class-balance term of dreaming weighs 5 instead of 1. Over a few
          hundred iterations (the paper runs 10,000) its gradient, small once the
          classifier's softmax saturates, lost to the BN-statistics term (weight
          50) and the generator left classes out: after task 4 of digits 5x2 one
          of 8 old classes got 3.9% of the dreams (uniform 12.5%). At weight 5
          every class got >= 8.4% and accuracy after task 4 rose from 70.3% to
          76.7% at the same budget (benchmarks/results/dream-diversity-digits.json).
          Measuring the paper's term in bits at weight 1 (``dream.balance_units``)
          was tried as the alternative and lost on digits over 3 seeds
          (docs/RECIPES.md, "The class-balance term").
        Weight aligning of the head (``head_balance="weight_align"``) is
        available but off: ABD's class-balanced head loss already rebalances
        the head, and aligning on top of it gave no gain beyond run-to-run
        noise. The method losses and their weights are the paper's.
        """
        first = TrainConfig(epochs=epochs, lr=0.1, schedule="cosine", milestones=(), warmup_epochs=min(1.0, epochs / 5))
        later = TrainConfig(epochs=epochs, lr=0.1, schedule="cosine", milestones=(), warmup_epochs=min(1.0, epochs / 5))
        base: dict[str, Any] = dict(
            recipe="short",
            first_task=first,
            later_tasks=later,
            dream=DreamConfig(iterations=dream_iterations, lr=5e-3, balance_weight=5.0),
            head_balance="none",
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "LearnerConfig":
        if name == "paper":
            return cls.paper(**overrides)
        if name == "short":
            return cls.short_budget(**overrides)
        raise ConfigError(f"unknown recipe {name!r}; expected 'paper' or 'short'")

    def with_overrides(self, overrides: dict[str, str]) -> "LearnerConfig":
        """A copy with dotted settings replaced, e.g. ``{"later_tasks.lr": "0.05"}``.

        Values are parsed as JSON (numbers, booleans, lists) and fall back to
        the plain string; each is checked against the type of the setting it
        replaces, so a typo fails loudly instead of training the wrong thing.
        """
        data = self.to_dict()
        for key, raw in overrides.items():
            parts = key.split(".")
            node: Any = data
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    known = sorted(node) if isinstance(node, dict) else []
                    raise ConfigError(f"unknown setting {key!r}: no {part!r} in {'.'.join(parts[:i]) or 'the config'} "
                                      f"(expected one of {known})")
                if i < len(parts) - 1:
                    node = node[part]
            old = node[parts[-1]]
            if isinstance(old, dict):
                raise ConfigError(f"setting {key!r} is a group; set one of its fields {sorted(old)}")
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, TypeError):
                value = raw
            if _is_auto(value) or _is_auto(old):
                # an auto-able setting: "auto" or a concrete value; validate() checks the value's type
                ok = True
            elif isinstance(old, bool) or isinstance(value, bool):  # before int: bool is an int subclass
                ok = isinstance(old, bool) == isinstance(value, bool) or old is None
            elif isinstance(old, int):
                ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                value = int(value) if ok else value
            elif isinstance(old, float):
                ok = isinstance(value, (int, float))
                value = float(value) if ok else value
            elif isinstance(old, (list, tuple)):
                ok = isinstance(value, list)
            elif isinstance(old, str):
                ok = isinstance(value, str)
            else:  # None: optional setting, take the parsed value
                ok = True
            if not ok:
                raise ConfigError(f"setting {key!r} expects a value like {old!r}, got {raw!r}")
            node[parts[-1]] = value
        return LearnerConfig.from_dict(data)

    # ----- (de)serialisation --------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LearnerConfig":
        data = dict(data)
        nested = {
            "first_task": TrainConfig,
            "later_tasks": TrainConfig,
            "dream": DreamConfig,
            "augment": AugmentConfig,
            "losses": LossConfig,
        }
        for key, typ in nested.items():
            if key in data and isinstance(data[key], dict):
                sub = dict(data[key])
                if "milestones" in sub:
                    sub["milestones"] = tuple(sub["milestones"])
                data[key] = typ(**sub)
        for key in ("mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**data)
