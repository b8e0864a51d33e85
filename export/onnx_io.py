"""Writing and checking ONNX files: atomic writes, the checker, IR stamping, metadata, sessions.

Kept apart from the torch side so that quantisation, parity checks and
exports all write files the same way: to a temporary name in the
destination directory, checked, then renamed, so a killed export never
leaves a truncated model under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx

from abd_edge.atomic import staged_file  # the one commit protocol, shared with bundle writers
from abd_edge.bundle_schema import session_options
from abd_edge.errors import ExportError
from abd_edge.onnx_compat import min_onnxruntime_for

#: Prefix of the metadata_props keys abd-edge writes into its ONNX files.
META_PREFIX = "abd_edge."


def atomic_write(path: Path, write: Callable[[Path], None], check: Callable[[Path], None]) -> None:
    """Write via ``write(tmp)``, ``check(tmp)``, then commit onto ``path`` (:func:`abd_edge.atomic.staged_file`).

    A reader (or a crash) sees either the previous file or the complete new
    one, never a prefix; a failed check never reaches the final name.
    """
    with staged_file(path, fault="export_mid_write") as tmp:
        write(tmp)
        check(tmp)


def value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    return {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}


def stamp(path: Path, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Lower the IR version to the lowest the opsets need, add metadata, rewrite ``path`` in place.

    Exporters stamp the newest IR version their onnx release knows (10 in
    2025), which older ONNX Runtimes refuse outright although nothing in our
    graphs needs it. The node-level ``metadata_props`` (debug traces of the
    torch exporter, an IR 10 field) are dropped with it. ``metadata`` goes
    into the model's ``metadata_props`` (values that are not strings as
    JSON) so that the .onnx alone, opened in Netron or an app, says what
    its outputs mean. Returns the IR version, the opsets and the first ONNX
    Runtime release that reads the file.
    """
    model = onnx.load(str(path), load_external_data=False)
    _drop_unused_domains(model)
    imports = [(o.domain, o.version) for o in model.opset_import]
    lowest = onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid(d, v) for d, v in imports], ignore_unknown=True
    )
    if lowest < model.ir_version:
        model.ir_version = lowest
        for node in model.graph.node:
            del node.metadata_props[:]
        for fn in model.functions:
            for node in fn.node:
                del node.metadata_props[:]
    if metadata:
        keep = {p.key: p.value for p in model.metadata_props}
        for key, value in metadata.items():
            keep[META_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        onnx.helper.set_model_props(model, keep)
    onnx.save(model, str(path))
    opsets = opsets_of(model)
    return {"ir_version": int(model.ir_version), "opsets": opsets, "min_onnxruntime": min_onnxruntime_for(model.ir_version, opsets)}


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    """Keep only the opset imports some node uses (plus the default domain).

    Quantisation tools import every domain they know (ai.onnx.ml 5,
    com.microsoft, ...); an unused import still makes an older runtime
    refuse the file.
    """
    used = {n.domain for n in model.graph.node} | {n.domain for fn in model.functions for n in fn.node}
    used |= {fn.domain for fn in model.functions}
    kept = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The abd-edge ``metadata_props`` of an ONNX file, JSON values decoded."""
    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key.startswith(META_PREFIX):
            try:
                out[p.key[len(META_PREFIX):]] = json.loads(p.value)
            except json.JSONDecodeError:
                out[p.key[len(META_PREFIX):]] = p.value
    return out


def check_onnx_file(path: Path, batch_inputs: Sequence[str]) -> onnx.ModelProto:
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


def make_session(onnx_path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with the project's session options; ``threads`` pins intra-op threads."""
    import onnxruntime as ort

    opts = session_options(threads)
    path = Path(onnx_path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
