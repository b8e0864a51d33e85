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
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from abd_edge.engine import Normalizer
from abd_edge.errors import ConfigError, ExportError, ImageSpecError
from abd_edge.models.generator import Generator
from abd_edge.models.resnet import CifarResNet

from abd_edge.bundle_format import fault_point  # the crash-test hook shared with bundle writers


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
    "verify_parity",
    "verification_images",
    "quantize_classifier_int8",
    "compare_int8",
    "make_session",
    "onnx_latency",
    "torch_latency",
]

#: Opset 18 is the exporter's well-trodden default and runs on every ONNX Runtime >= 1.14.
DEFAULT_OPSET = 18
CLASSIFIER_INPUT = "images"
CLASSIFIER_OUTPUTS = ("logits", "probabilities")
GENERATOR_INPUT = "z"
GENERATOR_OUTPUT = "images"
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


def _fsync(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsynced on some platforms
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], None], check: Callable[[Path], None]) -> None:
    """Write via ``write(tmp)``, ``check(tmp)``, then rename onto ``path``.

    The temporary file lives in the destination directory so the final
    ``os.replace`` is an atomic rename on one filesystem: a reader (or a
    crash) sees either the previous file or the complete new one, never a
    prefix. A failed check never reaches the final name either.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _fsync(tmp)
        check(tmp)
        fault_point("export_mid_write")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}


def _check_onnx_file(path: Path, batch_inputs: Sequence[str]) -> onnx.ModelProto:
    """ONNX checker plus the properties our deployment relies on.

    The checker alone would accept a graph whose batch got specialised, whose
    BatchNorms run in training mode (batch statistics: outputs then depend on
    the other images in the batch) or whose weights sit in a side file that
    the bundle would not carry; each of those is an :class:`ExportError`.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape-inference errors
        raise ExportError(f"ONNX checker rejected the exported model {path.name}: {e}") from e
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(
                f"initializer {init.name!r} of {path.name} is stored as external data; "
                "expected every weight inside the single .onnx file"
            )
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for a in node.attribute:
                if a.name == "training_mode" and a.i != 0:
                    raise ExportError(
                        f"BatchNormalization node {node.name!r} in {path.name} has training_mode={a.i}; "
                        "expected 0 (running statistics)"
                    )
    inputs = {v.name: v for v in model.graph.input}
    for name in batch_inputs:
        if name not in inputs:
            raise ExportError(f"exported model {path.name} has inputs {sorted(inputs)}; expected one named {name!r}")
        dims = inputs[name].type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            got = dims[0].dim_value if dims else "no dimensions"
            raise ExportError(
                f"input {name!r} of {path.name} has a fixed batch dimension ({got}); expected a symbolic one"
            )
    return model


def _export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | os.PathLike[str],
    opset: int,
) -> dict[str, Any]:
    """Export ``module`` with a dynamic batch on every input; write atomically; check; describe."""
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

    model_box: list[onnx.ModelProto] = []

    def write(tmp: Path) -> None:
        program.save(tmp, external_data=False)

    def check(tmp: Path) -> None:
        model_box.append(_check_onnx_file(tmp, input_names))

    _atomic_write(final, write, check)
    model = model_box[0]
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    return {
        "path": str(final),
        "opset": opsets.get("ai.onnx", opset),
        "opsets": opsets,
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "bytes": final.stat().st_size,
        "export_seconds": export_s,
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
) -> dict[str, Any]:
    """Export the classifier with the uint8 NHWC contract (see :class:`DeployedClassifier`).

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
    info = _export_module(wrapper, example, [CLASSIFIER_INPUT], CLASSIFIER_OUTPUTS, path, opset)
    info.update(kind="classifier", n_classes=wrapper.n_classes, input_shape_nhwc=[h, w, c])
    return info


# --------------------------------------------------------------------------- generator


def export_generator(generator: Generator | nn.Module, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
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
    info = _export_module(gen, example, [GENERATOR_INPUT], [GENERATOR_OUTPUT], path, opset)
    info.update(kind="generator", zdim=zdim)
    return info


# --------------------------------------------------------------------------- verification


def make_session(onnx_path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; ``threads`` pins intra-op threads (None: ORT's default, all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers on quantized graphs
    path = Path(onnx_path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _torch_outputs(module: nn.Module, tensors: list[torch.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Run ``module`` in eval mode without gradients and name its outputs like the ONNX graph's."""
    with _eval_mode(module), torch.no_grad():
        out = module(*tensors)
    if isinstance(out, Mapping):
        items = {str(k): v for k, v in out.items()}
    elif isinstance(out, (tuple, list)):
        items = dict(zip(names, out))
    else:
        items = {names[0]: out}
    return {k: v.detach().float().cpu().numpy() for k, v in items.items()}


def verify_parity(
    torch_module: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-6,
    output: str = "logits",
) -> dict[str, Any]:
    """Check that ONNX Runtime and torch agree on ``inputs``; raise :class:`ExportError` if not.

    Compares the named ``output``: every element must satisfy
    ``|ort - torch| <= atol + rtol * scale``, where ``scale`` is the largest
    magnitude in that sample's output row. For logits of ordinary size this
    is the absolute bound ``atol``; the small relative part only matters for
    a model whose outputs reach the thousands, where float32 rounding of the
    large values (about 6e-8 of them per operation) leaves every element of
    the row uncertain by more than any fixed bound. For 2-D (N, classes) outputs the top-1 class must be
    the same for every row. A top-1 flip is forgiven only where torch itself
    has the two classes within ``atol`` of each other (a numerical tie that
    any change of summation order can break); those are counted as
    ``top1_ties``. Returns ``max_abs_diff``, ``top1_equal`` (strict, None
    for non-classifier outputs), ``top1_ties`` and ``n``.
    """
    path = Path(onnx_path)
    session = make_session(path)
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    missing = [n for n in in_names if n not in inputs]
    extra = [n for n in inputs if n not in in_names]
    if missing or extra:
        raise ExportError(f"inputs for {path.name} must be named {in_names}; got {sorted(inputs)}")
    if output not in out_names:
        raise ExportError(f"{path.name} has outputs {out_names}; there is no output {output!r} to compare")
    feeds = {n: np.ascontiguousarray(inputs[n]) for n in in_names}
    ort_out = dict(zip(out_names, session.run(None, feeds)))[output]
    device = _module_device(torch_module)
    tensors = [torch.from_numpy(feeds[n].copy()).to(device) for n in in_names]
    torch_out = _torch_outputs(torch_module, tensors, out_names)
    if output not in torch_out:
        raise ExportError(f"the torch module has no output {output!r} (it returns {sorted(torch_out)})")
    ref = torch_out[output]
    if ref.shape != ort_out.shape:
        raise ExportError(
            f"{path.name}: output {output!r} has shape {tuple(ort_out.shape)} in ONNX Runtime "
            f"but {tuple(ref.shape)} in torch"
        )
    diff = np.abs(ort_out.astype(np.float64) - ref.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    mag = np.abs(ref.astype(np.float64))
    scale = mag.reshape(mag.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (mag.ndim - 1)) if mag.ndim and mag.size else mag
    excess = diff - (atol + rtol * scale)
    if not np.isfinite(max_diff):
        raise ExportError(f"{path.name}: output {output!r} is not finite in ONNX Runtime or torch")
    n = int(ref.shape[0]) if ref.ndim else 1
    top1_equal: bool | None = None
    ties = 0
    bad_rows: list[int] = []
    if ref.ndim == 2 and ref.shape[1] > 0:
        t_top, o_top = ref.argmax(1), ort_out.argmax(1)
        top1_equal = bool(np.all(t_top == o_top))
        for i in np.flatnonzero(t_top != o_top):
            if ref[i, t_top[i]] - ref[i, o_top[i]] <= atol:
                ties += 1
            else:
                bad_rows.append(int(i))
    result = {"max_abs_diff": max_diff, "top1_equal": top1_equal, "top1_ties": ties, "n": n, "atol": atol, "rtol": rtol,
              "max_abs_output": float(mag.max()) if mag.size else 0.0}
    if diff.size and float(excess.max()) > 0:
        raise ExportError(
            f"{path.name}: ONNX Runtime and torch differ by {max_diff:.3g} on output {output!r} "
            f"over {n} inputs; expected at most atol={atol:g} + rtol={rtol:g} * (largest |output| of the sample)"
        )
    if bad_rows:
        raise ExportError(
            f"{path.name}: top-1 class differs between ONNX Runtime and torch for {len(bad_rows)} of {n} "
            f"inputs (rows {bad_rows[:10]}) although max |diff| {max_diff:.3g} <= atol={atol:g}"
        )
    return result


def verification_images(source: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 NHWC images to verify an export on, without any stored real data.

    ``source`` is a learner or a ``(normalizer, generator)`` pair. About half
    are dreamed: generator samples (eval mode) mapped from the normalised
    input space back to pixels (x * std + mean, clamped to [0, 1], * 255,
    rounded). They exercise the classifier where it was trained, so top-1
    comparisons are meaningful. The rest are uniform random pixels, which
    reach the extremes 0 and 255 the dreams rarely produce. With no
    generator (a method without replay) all images are random.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ConfigError(f"source must be a learner or a (normalizer, generator) pair, got a {len(source)}-tuple")
        normalizer, generator = source
        shape = None
    else:
        normalizer, generator = source.normalizer, source.generator
        shape = source.input_shape
    mean = torch.as_tensor(normalizer.mean, dtype=torch.float32).detach().cpu().reshape(1, -1, 1, 1)
    std = torch.as_tensor(normalizer.std, dtype=torch.float32).detach().cpu().reshape(1, -1, 1, 1)
    n_dream = (n + 1) // 2 if generator is not None else 0
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    if generator is not None:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(n_dream, generator.zdim, generator=g)
        x = _torch_outputs(generator, [z.to(_module_device(generator))], ["images"])["images"]
        pix = (torch.from_numpy(x) * std + mean).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        parts.append(pix.permute(0, 2, 3, 1).contiguous().numpy())
        shape = tuple(x.shape[1:])
    if shape is None:
        raise ConfigError("cannot tell the image shape: give a learner or a (normalizer, generator) pair with a generator")
    c, h, w = shape
    if mean.numel() != c:
        raise ImageSpecError(f"normalizer has {mean.numel()} channels but the images have {c}")
    parts.append(rng.integers(0, 256, size=(n - n_dream, h, w, c), dtype=np.uint8))
    return np.ascontiguousarray(np.concatenate(parts))


def _check_uint8_images(images: Any, expected_hwc: Sequence[int | str] | None, what: str) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ImageSpecError(f"{what} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ImageSpecError(
            f"{what} must be non-empty uint8 (N, H, W, C), got {images.dtype} with shape {images.shape}"
        )
    if expected_hwc is not None:
        fixed = [(i, d) for i, d in enumerate(expected_hwc) if isinstance(d, int) and d > 0]
        if any(images.shape[1 + i] != d for i, d in fixed):
            raise ImageSpecError(
                f"{what} have (H, W, C) = {images.shape[1:]}; the model expects {tuple(expected_hwc)}"
            )
    return np.ascontiguousarray(images)


def _input_hwc(model: onnx.ModelProto, name: str) -> list[int | str]:
    for v in model.graph.input:
        if v.name == name:
            return _value_info(v)["shape"][1:]
    raise ExportError(f"the model has no input {name!r}; expected an exported classifier")


# --------------------------------------------------------------------------- int8


def quantize_classifier_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: np.ndarray,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    batch_size: int = 16,
    preprocess: bool = True,
) -> dict[str, Any]:
    """Static int8 quantisation (QDQ) of an exported classifier, calibrated on given uint8 NHWC images.

    Calibrate on dreamed images (:func:`verification_images`), never on
    stored real data: the deployment keeps no training images. Only Conv,
    Gemm, MatMul, Add and Relu are quantised, so the uint8 -> float
    preprocessing stays exact and the softmax keeps float precision
    (quantising it would make probabilities sum to 0.996). Activations are
    uint8 and weights int8 (the U8S8 scheme ORT's x86 kernels are fastest
    with); ``reduce_range`` uses 7-bit weights, which avoids overflow on
    x86 CPUs without VNNI if accuracy suffers there.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = Path(fp32_path)
    if not src.is_file():
        raise ExportError(f"fp32 model {src} does not exist")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    hwc = _input_hwc(onnx.load(str(src), load_external_data=False), CLASSIFIER_INPUT)
    images = _check_uint8_images(calibration_images, hwc, "calibration images")

    class _Reader(CalibrationDataReader):
        """Feeds the calibration images batch by batch (the calibrator pulls until None)."""

        def __init__(self) -> None:
            self._starts = iter(range(0, images.shape[0], batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self._starts, None)
            return None if s is None else {CLASSIFIER_INPUT: images[s : s + batch_size]}

    final = Path(out_path)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="abd-int8-") as work:
        source = src
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = Path(work) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(source))
            except Exception as e:
                raise ExportError(f"ONNX Runtime quantisation pre-processing failed on {src.name}: {e}") from e

        def write(tmp: Path) -> None:
            try:
                quantize_static(
                    str(source),
                    str(tmp),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add", "Relu"],
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
            except Exception as e:
                raise ExportError(f"int8 quantisation of {src.name} failed: {e}") from e

        def check(tmp: Path) -> None:
            _check_onnx_file(tmp, [CLASSIFIER_INPUT])

        _atomic_write(final, write, check)
    return {
        "path": str(final),
        "bytes": final.stat().st_size,
        "fp32_bytes": src.stat().st_size,
        "seconds": time.perf_counter() - start,
        "calibration_images": int(images.shape[0]),
        "format": "QDQ",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "activation_type": "uint8",
        "weight_type": "int8",
    }


def compare_int8(
    fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], images: np.ndarray
) -> dict[str, Any]:
    """How closely the int8 model follows the fp32 one on ``images`` (uint8 NHWC).

    ``top1_agreement`` is the fraction of images with the same predicted
    class; ``max_prob_diff`` / ``mean_prob_diff`` compare the probabilities.
    """
    s32, s8 = make_session(fp32_path), make_session(int8_path)
    hwc = _value_info_from_session(s32)
    x = _check_uint8_images(images, hwc, "images")
    p32 = s32.run([CLASSIFIER_OUTPUTS[1]], {CLASSIFIER_INPUT: x})[0]
    p8 = s8.run([CLASSIFIER_OUTPUTS[1]], {CLASSIFIER_INPUT: x})[0]
    d = np.abs(p32.astype(np.float64) - p8.astype(np.float64))
    return {
        "n": int(x.shape[0]),
        "top1_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
        "max_prob_diff": float(d.max()),
        "mean_prob_diff": float(d.max(axis=1).mean()),
    }


def _value_info_from_session(session: Any) -> list[int | str]:
    for i in session.get_inputs():
        if i.name == CLASSIFIER_INPUT:
            return list(i.shape[1:])
    raise ExportError(f"the model has inputs {[i.name for i in session.get_inputs()]}; expected {CLASSIFIER_INPUT!r}")


# --------------------------------------------------------------------------- latency


def _random_input(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype in ("tensor(uint8)", "uint8"):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def _timing(times_s: list[float], batch_size: int, threads: int | None, runtime: str) -> dict[str, Any]:
    med = statistics.median(times_s)
    return {
        "runtime": runtime,
        "batch_size": batch_size,
        "threads": threads,
        "repeats": len(times_s),
        "median_ms": med * 1e3,
        "min_ms": min(times_s) * 1e3,
        "images_per_s": batch_size / med if med > 0 else float("inf"),
    }


def _check_timing_args(batch_size: int, repeats: int, warmup: int) -> None:
    for name, v, lo in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def onnx_latency(
    onnx_path: str | os.PathLike[str],
    batch_size: int,
    input_shape_nhwc: Sequence[int],
    *,
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Median wall time of one ONNX Runtime call on a batch (and images/s).

    ``input_shape_nhwc`` is the shape after the batch dimension, (H, W, C)
    for a classifier (``(zdim,)`` also works for a generator). The input
    dtype follows the model (random pixels for uint8, normal noise for float).
    Warm-up runs are excluded: the first calls allocate memory arenas.
    """
    _check_timing_args(batch_size, repeats, warmup)
    session = make_session(onnx_path, threads=threads)
    inp = session.get_inputs()[0]
    x = _random_input(inp.type, (batch_size, *(int(v) for v in input_shape_nhwc)), seed)
    feeds = {inp.name: x}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return _timing(times, batch_size, threads, "onnxruntime")


def torch_latency(
    module: nn.Module,
    batch_size: int,
    input_shape_nhwc: Sequence[int],
    *,
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    dtype: str = "uint8",
) -> dict[str, Any]:
    """The same measurement for a torch module in eager mode (eval, inference mode), same input contract.

    Pass a :class:`DeployedClassifier` to time exactly what the ONNX graph
    does. ``threads`` temporarily sets ``torch.set_num_threads``.
    """
    _check_timing_args(batch_size, repeats, warmup)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    x = torch.from_numpy(_random_input(dtype, (batch_size, *(int(v) for v in input_shape_nhwc)), seed))
    x = x.to(_module_device(module))
    prev_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        with _eval_mode(module), torch.inference_mode():
            for _ in range(warmup):
                module(x)
            sync()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                module(x)
                sync()
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(prev_threads)
    return _timing(times, batch_size, threads, "torch")
