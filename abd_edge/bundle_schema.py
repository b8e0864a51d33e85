"""The typed schema of a deployment bundle: file names, ONNX tensor names, session options, the manifest.

The exporter (torch side) writes a :class:`Manifest` and the device runtime
(numpy + onnxruntime) reads one back, so both agree on every field by
construction instead of by matching string keys in two places. Torch-free
and onnx-free on purpose: the runtime imports it.

Format versions (``format_version`` of ``manifest.json``):

* 1: the first release. The classifier's input name sat in ``input.name``,
  the output names were implied, ``outputs`` held descriptions, and
  ``generator.onnx`` / ``serve_only`` were missing in early files.
* 2 (current): ``tensors`` names every ONNX input and output, ``input`` is
  the pixel contract only, ``normalization`` says where it is applied,
  ``generator.onnx`` and ``serve_only`` are always present.

:func:`migrate` lifts an older manifest to the current version in memory
(the file, its digest and its signature stay as written), so every bundle
an earlier release exported still opens. Learner manifests share the
envelope (``format``, ``format_version``, ``kind``, ``files``); nothing in
them changed, so they are still written as version 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import BundleIntegrityError, BundleVersionError, ConfigError, ManifestFieldError

FORMAT_NAME = "abd-edge"
#: The format version a bundle manifest is written with.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

MANIFEST = "manifest.json"
#: sha256 of the manifest's canonical JSON, written beside it (see bundle_format.manifest_digest).
MANIFEST_DIGEST = "manifest.sha256"
#: ed25519 signature over the manifest digest (abd_edge.signing); it signs the manifest, so the manifest cannot list it.
SIGNATURE = "signature.json"
#: Names beside the manifest that the manifest cannot list (they cover the manifest itself).
RESERVED_NAMES = frozenset({MANIFEST, MANIFEST_DIGEST, SIGNATURE})

BUNDLE_KIND = "bundle"
LEARNER_KIND = "learner"
#: The version each kind is written with: a saved learner's manifest did not change in format 2, so it keeps
#: version 1 and a saved learner stays readable by every release.
WRITE_VERSIONS = {BUNDLE_KIND: FORMAT_VERSION, LEARNER_KIND: 1}

# The files of a deployment bundle version (abd_edge.export writes them, abd_edge.runtime reads them).
CLASSIFIER_ONNX = "classifier.onnx"
CLASSIFIER_INT8_ONNX = "classifier.int8.onnx"
GENERATOR_ONNX = "generator.onnx"
LEARNER_DIR = "learner"

NORMALIZATION_APPLIED = "inside the graph: x / 255, then (x - mean) / std per channel"


@dataclass(frozen=True)
class TensorNames:
    """Input and output names of the exported graphs (the exporter names them, the runtime feeds them)."""

    classifier_input: str = "images"
    logits: str = "logits"
    probabilities: str = "probabilities"
    generator_input: str = "z"
    generator_output: str = "images"

    @property
    def classifier_outputs(self) -> tuple[str, str]:
        return (self.logits, self.probabilities)


#: The names this release exports with; a manifest records the names its files were exported with.
TENSORS = TensorNames()


def session_options(threads: int | None = None) -> Any:
    """The ONNX Runtime session options every abd-edge session uses (export checks and the device alike).

    ``threads`` pins intra-op threads (None: ORT's default, all cores) and
    runs operators one at a time (our graphs are chains; inter-op threads
    only add contention on a small device). Warnings are silenced: ORT
    warns about unused initializers on quantised graphs, which is noise.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


# ----------------------------------------------------------------------------- field checks


class _Fields:
    """Reads typed fields out of a manifest dict; every failure names the field and what was expected."""

    def __init__(self, doc: Mapping[str, Any], where: str) -> None:
        self.doc, self.where = doc, where

    def fail(self, name: str, got: Any, expected: str) -> ManifestFieldError:
        return ManifestFieldError(self.where, name, got, expected)

    def get(self, name: str, check: Callable[[Any], bool], expected: str, *, default: Any = ...) -> Any:
        parts = name.split(".")
        node: Any = self.doc
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                if default is not ...:
                    return default
                raise self.fail(name, "missing", expected)
            node = node[part]
        if not check(node):
            raise self.fail(name, node, expected)
        return node


def _is_int(v: Any, minimum: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


# ----------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ClassEntry:
    index: int
    label: int | str
    name: str


@dataclass(frozen=True)
class InputSpec:
    """The classifier's pixel contract: uint8, NHWC, dynamic batch."""

    height: int
    width: int
    channels: int
    dtype: str = "uint8"
    layout: str = "NHWC"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class GeneratorSpec:
    zdim: int
    onnx: bool  # whether generator.onnx is in the version (else the generator travels only as learner weights)


@dataclass(frozen=True)
class Manifest:
    """A bundle version's ``manifest.json`` (format version 2), as written by the exporter and read by the runtime.

    ``files`` is filled in by the writer (sha256 and size of every file);
    ``learner``, ``privacy``, ``parity``, ``quantization`` and ``summary``
    are records other layers own (the engine's config, the privacy ledger,
    export checks) and stay plain JSON objects here.
    """

    version: str
    parent_version: str | None
    classes: tuple[ClassEntry, ...]
    input: InputSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    tensors: TensorNames = TENSORS
    opset: int | None = None
    ir_version: int | None = None
    min_onnxruntime: str | None = None
    generator: GeneratorSpec | None = None
    serve_only: bool = False
    created: str | None = None
    abd_edge_version: str | None = None
    learner: Mapping[str, Any] | None = None
    privacy: Mapping[str, Any] = field(default_factory=lambda: {"ledger": []})
    parity: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def labels(self) -> tuple[int | str, ...]:
        return tuple(c.label for c in self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def privacy_ledger(self) -> list[Any]:
        return list(self.privacy.get("ledger") or [])

    @property
    def int8_note(self) -> str | None:
        """Why the int8 classifier is absent, if the export said so."""
        q = self.quantization or {}
        return q.get("warning") if isinstance(q.get("warning"), str) else None

    def has(self, name: str) -> bool:
        return name in self.files

    def learner_files(self) -> list[str]:
        return [n for n in self.files if n.startswith(LEARNER_DIR + "/")]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``manifest.json``."""
        h, w, c = self.input.shape
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "kind": BUNDLE_KIND,
            "version": self.version,
            "parent_version": self.parent_version,
            "created": self.created,
            "abd_edge_version": self.abd_edge_version,
            "files": {n: {"sha256": e.sha256, "bytes": e.bytes} for n, e in sorted(self.files.items())},
            "classes": [{"index": e.index, "label": e.label, "name": e.name} for e in self.classes],
            "input": {"dtype": self.input.dtype, "layout": self.input.layout, "shape": [None, h, w, c]},
            "normalization": {"mean": list(self.mean), "std": list(self.std), "applied": NORMALIZATION_APPLIED},
            "tensors": dataclasses.asdict(self.tensors),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "min_onnxruntime": self.min_onnxruntime,
            "generator": None if self.generator is None else dataclasses.asdict(self.generator),
            "serve_only": self.serve_only,
            "learner": None if self.learner is None else dict(self.learner),
            "privacy": dict(self.privacy),
            "parity": dict(self.parity),
            "quantization": None if self.quantization is None else dict(self.quantization),
            "summary": None if self.summary is None else dict(self.summary),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "manifest") -> "Manifest":
        """Parse (migrating older format versions first); :class:`ManifestFieldError` names any bad field."""
        doc = migrate(raw, where)
        f = _Fields(doc, where)
        files_raw = f.get("files", _is_dict, "an object of {name: {sha256, bytes}}")
        files = {}
        for name, e in files_raw.items():
            if not (isinstance(e, dict) and _is_str(e.get("sha256")) and _is_int(e.get("bytes"), 0)):
                raise f.fail(f"files[{name!r}]", e, "{'sha256': hex string, 'bytes': int >= 0}")
            files[name] = FileEntry(e["sha256"], e["bytes"])
        shape = f.get("input.shape", lambda v: isinstance(v, list) and len(v) == 4 and v[0] is None
                      and all(_is_int(x, 1) for x in v[1:]), "[null, H, W, C] with positive ints")
        spec = InputSpec(shape[1], shape[2], shape[3],
                         f.get("input.dtype", lambda v: v == "uint8", "'uint8' (this runtime feeds uint8 pixels)"),
                         f.get("input.layout", lambda v: v == "NHWC", "'NHWC'"))
        numbers = lambda v: isinstance(v, list) and len(v) == spec.channels and all(_is_number(x) for x in v)  # noqa: E731
        mean = f.get("normalization.mean", numbers, f"a list of {spec.channels} finite numbers")
        std = f.get("normalization.std", lambda v: numbers(v) and all(x > 0 for x in v),
                    f"a list of {spec.channels} positive numbers")
        names = {}
        for t in dataclasses.fields(TensorNames):
            names[t.name] = f.get(f"tensors.{t.name}", lambda v: isinstance(v, str) and v != "", "a tensor name (string)")
        generator = None
        if f.get("generator", _opt(_is_dict), "an object or null", default=None) is not None:
            generator = GeneratorSpec(f.get("generator.zdim", lambda v: _is_int(v, 1), "an int >= 1"),
                                      f.get("generator.onnx", lambda v: isinstance(v, bool), "true or false"))
        if (generator is not None and generator.onnx) != (GENERATOR_ONNX in files):
            raise f.fail("generator.onnx", None if generator is None else generator.onnx,
                         f"true exactly when {GENERATOR_ONNX} is listed in files")
        privacy = f.get("privacy", _is_dict, "an object with a 'ledger' list", default={"ledger": []})
        if not isinstance(privacy.get("ledger", []), list):
            raise f.fail("privacy.ledger", privacy.get("ledger"), "a list")
        return cls(
            version=f.get("version", _is_str, "a version name such as 'v000001'"),
            parent_version=f.get("parent_version", _opt(_is_str), "a version name or null", default=None),
            classes=_classes(f),
            input=spec,
            mean=tuple(float(x) for x in mean),
            std=tuple(float(x) for x in std),
            files=files,
            tensors=TensorNames(**names),
            opset=f.get("opset", _opt(_is_int), "an int or null", default=None),
            ir_version=f.get("ir_version", _opt(_is_int), "an int or null", default=None),
            min_onnxruntime=f.get("min_onnxruntime", _opt(_is_str), "a version string such as '1.14' or null",
                                  default=None),
            generator=generator,
            serve_only=f.get("serve_only", lambda v: isinstance(v, bool), "true or false"),
            created=f.get("created", _opt(_is_str), "an ISO time or null", default=None),
            abd_edge_version=f.get("abd_edge_version", _opt(_is_str), "a version string or null", default=None),
            learner=f.get("learner", _opt(_is_dict), "an object or null", default=None),
            privacy=privacy,
            parity=f.get("parity", _is_dict, "an object", default={}),
            quantization=f.get("quantization", _opt(_is_dict), "an object or null", default=None),
            summary=f.get("summary", _opt(_is_dict), "an object or null", default=None),
            format_version=doc["format_version"],
        )


def _classes(f: _Fields) -> tuple[ClassEntry, ...]:
    raw = f.get("classes", lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(c, dict) for c in v),
                "a non-empty list of {index, label, name} objects")
    out = []
    for i, c in enumerate(raw):
        sub = _Fields(c, f.where)
        where = f"classes[{i}]"
        try:
            index = sub.get("index", lambda v: _is_int(v, 0), "an int >= 0")
            label = sub.get("label", lambda v: isinstance(v, (int, str)) and not isinstance(v, bool), "an int or a string")
            name = sub.get("name", _is_str, "a string")
        except ManifestFieldError as e:
            raise f.fail(f"{where}.{e.field}", e.got, e.expected) from None
        out.append(ClassEntry(index, label, name))
    out.sort(key=lambda c: c.index)
    if [c.index for c in out] != list(range(len(out))):
        raise f.fail("classes[].index", [c.index for c in out], f"the indices 0..{len(out) - 1}, each once")
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise f.fail("classes[].label", labels[:10], "distinct labels")
    return tuple(out)


# ----------------------------------------------------------------------------- migrations


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: tensor names out of ``input`` into ``tensors``; ``generator.onnx`` and ``serve_only`` explicit."""
    out = dict(doc)
    if out.get("kind") == BUNDLE_KIND:
        files = out.get("files") if isinstance(out.get("files"), dict) else {}
        spec = dict(out["input"]) if isinstance(out.get("input"), dict) else out.get("input")
        name = spec.pop("name", TENSORS.classifier_input) if isinstance(spec, dict) else TENSORS.classifier_input
        if isinstance(spec, dict):
            spec.pop("normalization", None)  # a description; v2 keeps it in normalization.applied
        out["input"] = spec
        out.setdefault("tensors", {**dataclasses.asdict(TensorNames()), "classifier_input": name})
        out.pop("outputs", None)  # descriptions of the two outputs; v2 names them in tensors
        gen = out.get("generator")
        if isinstance(gen, dict):
            gen = {k: v for k, v in gen.items() if k != "output"}
            gen.setdefault("onnx", GENERATOR_ONNX in files)
            out["generator"] = gen
        out.setdefault("serve_only", not any(isinstance(n, str) and n.startswith(LEARNER_DIR + "/") for n in files))
        if isinstance(out.get("quantization"), dict):
            out["quantization"] = {k: v for k, v in out["quantization"].items() if k != "path"}  # a staging path
    out["format_version"] = 2
    return out


#: format_version -> the function that lifts a manifest of that version to the next one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def migrate(raw: Mapping[str, Any], where: str = "manifest") -> dict[str, Any]:
    """The manifest lifted to :data:`FORMAT_VERSION`, one version step at a time (a new dict; ``raw`` is untouched)."""
    if not isinstance(raw, Mapping):
        raise BundleIntegrityError(f"{where} holds a {type(raw).__name__}, expected a JSON object")
    doc = dict(raw)
    version = doc.get("format_version")
    if not _is_int(version) or version not in SUPPORTED_VERSIONS:
        raise BundleVersionError(f"{where} has format_version {version!r}; this release reads {list(SUPPORTED_VERSIONS)}")
    while doc["format_version"] < FORMAT_VERSION:
        doc = MIGRATIONS[doc["format_version"]](doc)
    return doc
