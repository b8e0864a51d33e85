"""ONNX export of a learner's classifier and generator, with the checks a deployment needs.

The device runs ONNX Runtime, not torch, so whatever the training side knows
about preprocessing has to travel *inside* the graph: the exported classifier
takes uint8 NHWC pixels exactly as a camera delivers them and does the cast,
the scaling, the layout change and the per-channel standardisation itself.
An app then cannot get the preprocessing subtly wrong (BGR/RGB aside), and
the one contract is checked by ONNX Runtime's own input validation.

Every export is verified before anyone relies on it: the ONNX checker runs on
the written file, and :func:`verify_parity` compares ONNX Runtime with torch
on inputs that need no stored real data (dreamed images from the generator
plus random pixels, see :func:`verification_images`). Files are written to a
temporary name and renamed, so a killed export never leaves a truncated model
under the final name.

We use torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``,
built on ``torch.export`` and onnxscript): the TorchScript exporter is
deprecated, and ``dynamic_shapes`` with a named ``torch.export.Dim`` gives a
symbolic batch dimension that is checked at export time instead of assumed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from abd_edge.bundle_schema import NORMALIZATION_APPLIED, TENSORS
from abd_edge.engine import Normalizer
from abd_edge.errors import ConfigError, ExportError, ImageSpecError
from abd_edge.models.generator import Generator
from abd_edge.models.resnet import CifarResNet

from .onnx_io import atomic_write, check_onnx_file, opsets_of, stamp, value_info

__all__ = [
    "DEFAULT_OPSET",
    "CLASSIFIER_INPUT",
    "CLASSIFIER_OUTPUTS",
    "GENERATOR_INPUT",
    "GENERATOR_OUTPUT",
    "BATCH_DIM",
    "DeployedClassifier",
    "export_classifier",
    "export_generator",
]

#: Opset 18 with IR version 8 (the lowest it needs, see onnx_io.stamp) runs on ONNX Runtime >= 1.14.
DEFAULT_OPSET = 18
# The tensor names live in the bundle schema, which the runtime reads too.
CLASSIFIER_INPUT = TENSORS.classifier_input
CLASSIFIER_OUTPUTS = TENSORS.classifier_outputs
GENERATOR_INPUT = TENSORS.generator_input
GENERATOR_OUTPUT = TENSORS.generator_output
#: Name of the symbolic batch dimension in every exported graph.
BATCH_DIM = "batch"
#: Batch of the example inputs used for tracing. torch.export treats sizes 0
#: and 1 specially (broadcasting), and older releases refuse or specialise a
#: Dim traced at 1; tracing at 2 keeps the batch symbolic on every version.
_EXAMPLE_BATCH = 2


# --------------------------------------------------------------------------- helpers


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A CPU, float32, eval-mode deep copy without hooks or gradients.

    Exporting traces the module; doing that on the learner's own objects
    would switch their BN layers to eval, and any hook left attached (the
    dreaming BN-statistics hooks, say) would be traced into the graph. The
    copy isolates the learner from all of that.
    """
    dup = copy.deepcopy(module)
    for m in dup.modules():
        for attr in (
            "_forward_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks",
            "_forward_pre_hooks_with_kwargs",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            hooks = getattr(m, attr, None)
            if hooks is not None:
                hooks.clear()
    dup = dup.to(device="cpu", dtype=torch.float32)
    for p in dup.parameters():
        p.requires_grad_(False)
        # channels_last weights (the learner's option) trace fine, but contiguous keeps the graph plain.
        p.data = p.data.contiguous()
    return dup.eval()


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode, then restore every submodule's own flag.

    ``module.train(was_training)`` would not do: it is recursive, so it would
    switch frozen submodules (a wrapped eval-mode network, say) to training
    mode, and their BatchNorms would start using batch statistics.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _check_opset(opset: int) -> None:
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 23:
        raise ConfigError(f"opset must be an integer between 13 and 23, got {opset!r}")


def _export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | os.PathLike[str],
    opset: int,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``module`` with a dynamic batch on every input; stamp; write atomically; check; describe."""
    _check_opset(opset)
    final = Path(path)
    batch = torch.export.Dim(BATCH_DIM)
    dynamic_shapes = tuple({0: batch} for _ in example)
    start = time.perf_counter()
    try:
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verify=False,  # we verify ourselves, with tolerances and inputs we choose
            verbose=False,  # otherwise the exporter prints its progress to stdout
        )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__} -> {final.name}: {e}") from e
    if program is None:  # only the legacy exporter returns None
        raise ExportError(f"torch.onnx.export returned no program for {final.name}; expected an ONNXProgram")
    export_s = time.perf_counter() - start
    return _write_checked(final, lambda tmp: program.save(tmp, external_data=False), metadata, input_names,
                          export_s, start, opset)


def _write_checked(
    final: Path,
    save: Callable[[Path], None],
    metadata: Mapping[str, Any] | None,
    input_names: Sequence[str],
    export_seconds: float,
    start: float,
    opset: int | None = None,
) -> dict[str, Any]:
    """Save with ``save``, stamp and check, atomically into ``final``; describe what was written."""
    model_box: list[onnx.ModelProto] = []
    stamped: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        save(tmp)
        stamped.update(stamp(tmp, metadata))

    def check(tmp: Path) -> None:
        model_box.append(check_onnx_file(tmp, input_names))

    atomic_write(final, write, check)
    model = model_box[0]
    opsets = opsets_of(model)
    return {
        "path": str(final),
        "opset": opsets.get("ai.onnx", opset),
        "opsets": opsets,
        "ir_version": stamped["ir_version"],
        "min_onnxruntime": stamped["min_onnxruntime"],
        "inputs": [value_info(v) for v in model.graph.input],
        "outputs": [value_info(v) for v in model.graph.output],
        "bytes": final.stat().st_size,
        "export_seconds": export_seconds,
        "total_seconds": time.perf_counter() - start,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }


# --------------------------------------------------------------------------- classifier


class DeployedClassifier(nn.Module):
    """The classifier with the deployment input contract built in.

    Input ``images``: uint8 (N, H, W, C), what a camera or an image decoder
    gives. Inside: cast to float, /255, NHWC -> NCHW, standardise with the
    learner's mean/std, run the network, keep the first ``n_classes`` logits
    (the head has spare capacity for classes not learned yet, and their
    untrained logits must never win an argmax). Outputs ``logits`` (N,
    n_classes) and their softmax ``probabilities``, both float32.

    The wrapped network is a private eval-mode copy, so building one (and
    exporting it) never touches the learner's model.
    """

    def __init__(
        self,
        model: nn.Module,
        normalizer: Normalizer,
        n_classes: int,
        input_shape: Sequence[int],
    ) -> None:
        super().__init__()
        if len(tuple(input_shape)) != 3:
            raise ImageSpecError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(v) for v in input_shape)
        if min(c, h, w) < 1:
            raise ImageSpecError(f"input_shape must be positive (C, H, W), got {(c, h, w)}")
        capacity = getattr(model, "num_classes", None)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ConfigError(f"n_classes must be a positive integer, got {n_classes!r}")
        if capacity is not None and n_classes > capacity:
            raise ConfigError(f"n_classes={n_classes} exceeds the classifier head's capacity of {capacity} classes")
        in_channels = getattr(model, "in_channels", None)
        if in_channels is not None and in_channels != c:
            raise ImageSpecError(f"input_shape has C={c} channels but the classifier takes {in_channels}")
        mean = torch.as_tensor(normalizer.mean, dtype=torch.float32).detach().cpu().reshape(-1)
        std = torch.as_tensor(normalizer.std, dtype=torch.float32).detach().cpu().reshape(-1)
        if mean.numel() != c or std.numel() != c:
            raise ImageSpecError(
                f"normalizer has {mean.numel()} means and {std.numel()} stds; expected {c} (one per channel)"
            )
        if not bool(torch.all(std > 0)):
            raise ConfigError(f"normalizer std must be > 0 in every channel, got {std.tolist()}")
        self.model = _frozen_copy(model)
        self.register_buffer("mean", mean.view(1, c, 1, 1))
        self.register_buffer("std", std.view(1, c, 1, 1))
        self.n_classes = n_classes
        self.input_shape = (c, h, w)
        self.eval()

    def train(self, mode: bool = True) -> "DeployedClassifier":
        """Stay in eval mode: this is an inference graph, and a BatchNorm in
        training mode would make a prediction depend on the rest of its batch."""
        return super().train(False)

    @classmethod
    def from_learner(cls, learner: Any) -> "DeployedClassifier":
        """The learner's current classifier over its seen classes."""
        shape = learner.input_shape
        if shape is None:
            raise ExportError("the learner has not learned any task yet; there is no classifier to export")
        return cls(learner.model, learner.normalizer, learner.num_classes, shape)

    @property
    def input_shape_nhwc(self) -> tuple[int, int, int]:
        c, h, w = self.input_shape
        return (h, w, c)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(torch.float32) / 255.0
        x = x.permute(0, 3, 1, 2)
        x = (x - self.mean) / self.std
        logits = self.model(x)[:, : self.n_classes]
        return logits, torch.softmax(logits, dim=1)


def export_classifier(
    model: CifarResNet | nn.Module,
    normalizer: Normalizer,
    n_classes: int,
    input_shape: Sequence[int],
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the classifier with the uint8 NHWC contract (see :class:`DeployedClassifier`).

    The file's ``metadata_props`` always say the input layout and the
    normalisation baked into the graph; ``metadata`` adds more (the bundle
    writer passes the class labels and names).

    Returns what was written: ``path``, ``opset``, ``inputs``/``outputs``
    (name, dtype, shape with ``"batch"`` as the symbolic first dimension),
    ``bytes``, ``export_seconds`` (tracing and translation) and
    ``total_seconds`` (including the write and the checks). ``model`` may
    also be a ready :class:`DeployedClassifier`; the other arguments are then
    taken from it.
    """
    wrapper = model if isinstance(model, DeployedClassifier) else DeployedClassifier(
        model, normalizer, n_classes, input_shape
    )
    c, h, w = wrapper.input_shape
    example = (torch.zeros((_EXAMPLE_BATCH, h, w, c), dtype=torch.uint8),)
    info = _export_module(wrapper, example, [CLASSIFIER_INPUT], CLASSIFIER_OUTPUTS, path, opset,
                          _classifier_metadata(wrapper, metadata))
    info.update(kind="classifier", n_classes=wrapper.n_classes, input_shape_nhwc=[h, w, c], reexport="full")
    return info


def _classifier_metadata(wrapper: DeployedClassifier, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a classifier file's ``metadata_props`` say: its input contract, the normalisation, its outputs."""
    c, h, w = wrapper.input_shape
    return {
        "input": {"name": CLASSIFIER_INPUT, "dtype": "uint8", "layout": "NHWC", "shape": [BATCH_DIM, h, w, c]},
        "normalization": {"mean": wrapper.mean.reshape(-1).tolist(), "std": wrapper.std.reshape(-1).tolist(),
                          "applied": NORMALIZATION_APPLIED},
        "outputs": {TENSORS.logits: f"float32 ({BATCH_DIM}, {wrapper.n_classes})",
                    TENSORS.probabilities: f"softmax of {TENSORS.logits}"},
        **(metadata or {}),
    }


def reexport_classifier_head(
    previous: str | os.PathLike[str],
    model: CifarResNet | nn.Module,
    normalizer: Normalizer,
    n_classes: int,
    input_shape: Sequence[int],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Write ``path`` as the classifier file ``previous`` with only its head replaced; None if it cannot be.

    An update that leaves the backbone bit-identical (the class-mean head of
    a release-only or private update) changes two things in the exported
    graph: the head's weights and how many logits are kept. A full export
    would import torch's exporter (torch.export and onnxscript, about 180 MiB
    and the peak of such an update on a device) and take seconds; this
    rewrites the head's initializers, the logits' slice end and the output
    shapes of ``previous`` and restamps its metadata. The caller must know
    that the backbone, the normalisation and the input shape are those of
    ``previous`` (the bundle's parity check then verifies the file against
    the model either way). Returns None, writing nothing, when ``previous``
    is not ``logits = Slice(Gemm(features, W, b))`` with a head of the
    model's shape: the caller exports in full. As for
    :func:`export_classifier`, ``model`` may be a ready
    :class:`DeployedClassifier`, whose arguments are then used.
    """
    start = time.perf_counter()
    wrapper = model if isinstance(model, DeployedClassifier) else DeployedClassifier(
        model, normalizer, n_classes, input_shape
    )
    head = getattr(wrapper.model, "get_classifier", lambda: None)()
    if not isinstance(head, nn.Linear) or head.bias is None:
        return None
    graph_model = onnx.load(str(previous))
    g = graph_model.graph
    producers = {out: node for node in g.node for out in node.output}
    inits = {t.name: t for t in g.initializer}
    sl = producers.get(TENSORS.logits)
    if sl is None or sl.op_type != "Slice" or len(sl.input) < 4 or sl.input[2] not in inits or sl.input[3] not in inits:
        return None
    gemm = producers.get(sl.input[0])
    if gemm is None or gemm.op_type != "Gemm" or len(gemm.input) != 3:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if (attrs.get("transA", 0), attrs.get("transB", 0), attrs.get("alpha", 1.0), attrs.get("beta", 1.0)) != (0, 1, 1.0, 1.0):
        return None
    weight = head.weight.detach().float().cpu().numpy()
    bias = head.bias.detach().float().cpu().numpy()
    w_name, b_name = gemm.input[1], gemm.input[2]
    if w_name not in inits or b_name not in inits:
        return None
    if tuple(inits[w_name].dims) != weight.shape or tuple(inits[b_name].dims) != bias.shape:
        return None
    if numpy_helper.to_array(inits[sl.input[3]]).tolist() not in ([1], [-1]):  # the slice cuts the class axis
        return None
    if sl.input[1] not in inits or numpy_helper.to_array(inits[sl.input[1]]).tolist() != [0]:  # from the first logit
        return None
    if len(sl.input) > 4 and sl.input[4] and (sl.input[4] not in inits
                                              or numpy_helper.to_array(inits[sl.input[4]]).tolist() != [1]):
        return None
    inits[w_name].CopyFrom(numpy_helper.from_array(weight, w_name))
    inits[b_name].CopyFrom(numpy_helper.from_array(bias, b_name))
    ends = numpy_helper.to_array(inits[sl.input[2]])
    name = f"{sl.input[2]}_head"
    while name in inits or any(name in n.output for n in g.node):
        name += "_"
    new_ends = numpy_helper.from_array(np.array([wrapper.n_classes], dtype=ends.dtype), name)
    g.initializer.append(new_ends)  # a fresh name: the old end may be shared with other nodes
    old_ends, sl.input[2] = sl.input[2], new_ends.name
    if not any(old_ends in n.input for n in g.node):
        g.initializer.remove(inits[old_ends])
    for out in g.output:
        dims = out.type.tensor_type.shape.dim
        if out.name in CLASSIFIER_OUTPUTS and len(dims) == 2:
            dims[1].Clear()
            dims[1].dim_value = wrapper.n_classes
    kept = [v for v in g.value_info if v.name not in CLASSIFIER_OUTPUTS]
    del g.value_info[:]
    g.value_info.extend(kept)
    info = _write_checked(Path(path), lambda tmp: onnx.save(graph_model, str(tmp)),
                          _classifier_metadata(wrapper, metadata), [CLASSIFIER_INPUT], time.perf_counter() - start, start)
    c, h, w = wrapper.input_shape
    info.update(kind="classifier", n_classes=wrapper.n_classes, input_shape_nhwc=[h, w, c], reexport="head")
    return info


# --------------------------------------------------------------------------- generator


def export_generator(
    generator: Generator | nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the generator: ``z`` float32 (N, zdim) -> ``images`` (N, C, H, W), normalised space.

    The graph runs the BatchNorms with their running statistics (eval mode)
    even when the learner's generator is in train mode: a deployed dream must
    not depend on which other latents share its batch. This matches
    ``Learner.dream``, which also samples in eval mode. Weights stay inside
    the single file (``external_data=False``), also for the paper's 34 MB
    generator, so a bundle carries one self-contained model.
    """
    zdim = getattr(generator, "zdim", None)
    if not isinstance(zdim, int) or zdim < 1:
        raise ExportError(
            f"{type(generator).__name__} has no positive integer 'zdim' (got {zdim!r}); "
            "expected a Generator taking (N, zdim) latents"
        )
    gen = _frozen_copy(generator)
    example = (torch.zeros((_EXAMPLE_BATCH, zdim), dtype=torch.float32),)
    meta = {"input": {"name": GENERATOR_INPUT, "dtype": "float32", "shape": [BATCH_DIM, zdim]},
            "output": "float32 (batch, C, H, W) in the classifier's normalised input space", **(metadata or {})}
    info = _export_module(gen, example, [GENERATOR_INPUT], [GENERATOR_OUTPUT], path, opset, meta)
    info.update(kind="generator", zdim=zdim)
    return info

