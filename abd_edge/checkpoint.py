"""Saving and loading a Learner: safetensors for tensors, JSON for the rest.

Nothing is unpickled. The generator's Adam state is saved too, because the
reference keeps one optimizer across tasks and a loaded learner must continue
exactly as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .bundle_format import (
    check_save_target,
    clean_staging,
    commit_dir,
    read_json,
    read_manifest,
    recover_dir,
    staging_dir,
    write_json,
    write_manifest,
)
from .class_statistics import ClassStatistics
from .compute import resolve_device
from .config import LearnerConfig
from .engine import Normalizer
from .errors import AbdEdgeError, BundleError, BundleIntegrityError
from .learner_state import LearnerState, build_models, generator_optimizer
from .methods import build_method
from .registry import ClassRegistry
from .reports import LearnReport

if TYPE_CHECKING:  # only for annotations: the Learner imports this module, not the other way round
    from .learner import Learner

log = logging.getLogger(__name__)

KIND = "learner"
WEIGHTS = "weights.safetensors"
STATE = "state.json"


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors and JSON-able scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        scalars["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"][str(pid)][k] = v
    return tensors, scalars


def optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any], prefix: str) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, st in scalars["state"].items():
        state[int(pid)] = dict(st)
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": scalars["param_groups"]}


def learner_tensors(learner: "Learner") -> dict[str, torch.Tensor]:
    st = learner._state
    assert st.model is not None and st.normalizer is not None
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in st.model.state_dict().items()}
    if st.generator is not None:
        tensors.update({f"generator.{k}": v.detach().cpu().contiguous() for k, v in st.generator.state_dict().items()})
    tensors["normalizer.mean"] = st.normalizer.mean.cpu()
    tensors["normalizer.std"] = st.normalizer.std.cpu()
    if st.class_statistics is not None:
        tensors.update(st.class_statistics.tensors())
    return tensors


def learner_state(learner: "Learner", opt_scalars: dict[str, Any] | None) -> dict[str, Any]:
    st = learner._state
    assert st.model is not None
    return {
        "abd_edge_version": __version__,
        "config": learner.config.to_dict(),
        "registry": st.registry.to_dict(),
        "input_shape": list(st.input_shape) if st.input_shape else None,
        "head_capacity": st.model.num_classes,
        "tasks_learned": st.tasks_learned,
        "generator_optimizer": opt_scalars,
        "history": [r.to_dict() for r in learner.history],
        "class_statistics": st.class_statistics.to_dict() if st.class_statistics is not None else None,
    }


def save_learner(learner: "Learner", directory: Path, *, keep_optimizer: bool | None = None) -> Path:
    """``keep_optimizer=False`` leaves the generator's Adam state out (a bundle's default); None: the config's."""
    learner._require_fitted("save")
    st = learner._state
    tensors = learner_tensors(learner)
    opt_scalars = None
    keep = learner.config.dream.keep_optimizer if keep_optimizer is None else keep_optimizer
    if st.generator_opt is not None and keep:
        # The reference continues one Adam across tasks; without keep_optimizer a
        # fresh Adam starts each call, so its state (2x the generator) need not be kept.
        opt_t, opt_scalars = optimizer_tensors(st.generator_opt, "generator_opt")
        tensors.update(opt_t)
    check_save_target(directory, KIND)  # never delete or hide what this library did not write
    clean_staging(directory, [WEIGHTS, STATE])
    with staging_dir(directory) as staged:
        save_file(tensors, str(staged / WEIGHTS))
        write_json(staged / STATE, learner_state(learner, opt_scalars))
        write_manifest(staged, KIND, [WEIGHTS, STATE], abd_edge_version=__version__)
        commit_dir(staged, directory, KIND)
    return directory


def _as_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TypeError(f"{what} is {value!r}, expected an int >= {minimum}")
    return value


@dataclass
class SavedLearner:
    """A saved learner read back: what ``Learner.load`` builds a Learner from."""

    config: LearnerConfig
    state: LearnerState
    history: list[LearnReport]


def read_learner(directory: Path, *, device: str | None = None, hashes: bool = True) -> SavedLearner:
    """Read and check a saved learner; ``hashes=False`` only for files the caller has just verified (a bundle version).

    ``Learner.load`` is the public way in; this returns the parts so that
    this module needs no Learner (it would otherwise import the class that
    imports it).
    """
    if recover_dir(directory, KIND):
        log.warning("%s: restored the previous save after an interrupted save", directory)
    for leftover in clean_staging(directory, [WEIGHTS, STATE]):
        log.warning("%s: removed %s left by an interrupted save", directory, leftover.name)
    # Checks the manifest's digest, version, that the files read below are listed, and their hashes.
    read_manifest(directory, kind=KIND, required=[WEIGHTS, STATE], hashes=hashes)
    state = read_json(directory / STATE)
    # Every field is parsed inside the try: a state edited by hand (and re-hashed) must fail with
    # a BundleError naming the problem, never with a raw exception from deep inside.
    try:
        if not isinstance(state, dict):
            raise TypeError(f"state.json holds a {type(state).__name__}, expected an object")
        cfg = LearnerConfig.from_dict(state["config"])
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        cfg.validate()
        torch_device = resolve_device(cfg.device)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        replay = build_method(cfg.method, cfg.losses).uses_replay
        registry = ClassRegistry.from_dict(state["registry"])
        shape = state["input_shape"]
        if not isinstance(shape, list) or len(shape) != 3:
            raise TypeError(f"input_shape is {shape!r}, expected [C, H, W]")
        c, h, w = (_as_int(v, "input_shape entry", 1) for v in shape)
        capacity = _as_int(state["head_capacity"], "head_capacity", 1)
        if capacity < len(registry):
            raise ValueError(f"head_capacity {capacity} is smaller than the {len(registry)} classes of the registry")
        tasks_learned = _as_int(state["tasks_learned"], "tasks_learned", 1)
        history_raw = state.get("history", [])
        if not isinstance(history_raw, list) or not all(isinstance(r, dict) for r in history_raw):
            raise TypeError(f"history is {history_raw!r:.80}, expected a list of report objects")
        history = [LearnReport.from_dict(r) for r in history_raw]
        tensors = load_file(str(directory / WEIGHTS))
        model, gen = build_models(cfg, replay=replay, channels=c, size=h, capacity=capacity,
                                  device=torch_device, memory_format=memory_format)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        model.eval()
        gen_opt = None
        if gen is not None:
            gen.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("generator.")})
            gen.eval()
            if state.get("generator_optimizer") is not None:
                # Only a saved Adam state is rebuilt: the first optimizer imports torch._dynamo (about
                # 150 MiB), which an update that does not dream never needs (learn_new_classes makes its own).
                sd = optimizer_state(
                    {k: v.to(torch_device) for k, v in tensors.items() if k.startswith("generator_opt.")},
                    state["generator_optimizer"], "generator_opt",
                )
                gen_opt = generator_optimizer(gen, cfg.dream.lr, sd)  # saved contiguous: it aligns the layouts
        normalizer = Normalizer(tensors["normalizer.mean"], tensors["normalizer.std"]).to(torch_device)
        if normalizer.mean.numel() != c or normalizer.std.numel() != c:
            raise ValueError(f"normalizer has {normalizer.mean.numel()} channels, input_shape says {c}")
        statistics = None
        if state.get("class_statistics") is not None:
            statistics = ClassStatistics.from_saved(state["class_statistics"], tensors).to(torch_device)
            if statistics.means.shape[1] != model.feature_dim or max(statistics.rows) >= len(registry):
                raise ValueError(f"class statistics of {statistics.means.shape[1]}-d features for rows {list(statistics.rows)} do "
                                 f"not fit a {model.feature_dim}-d backbone with {len(registry)} classes")
    except AbdEdgeError as e:
        raise BundleError(f"{directory} holds an unusable learner state: {e}") from e
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as e:
        raise BundleIntegrityError(f"{directory} holds an inconsistent learner state: {type(e).__name__}: {e}") from e
    state = LearnerState(
        registry=registry, model=model, generator=gen, generator_opt=gen_opt, normalizer=normalizer,
        input_shape=(c, h, w), tasks_learned=tasks_learned, class_statistics=statistics,
    )
    return SavedLearner(cfg, state, history)
