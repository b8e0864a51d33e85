"""The on-disk format shared by saved learners and deployment bundles.

This module is deliberately free of torch (and of anything heavy): the
training side writes through it and the device runtime reads through it, so
both agree on one manifest envelope and one hashing rule (the typed bundle
manifest is :mod:`abd_edge.bundle_schema`; committing is
:mod:`abd_edge.atomic`). A manifest lists every file with its size and
sha256; nothing in a directory is trusted before the manifest has been
checked, and each file is hashed once per write and once per read.

The manifest itself is covered too: ``manifest.sha256`` beside it holds the
sha256 of its canonical JSON (:func:`manifest_digest`), so a hand-edited
class name or files table is refused like an edited weight file. No symlink and
no special file is accepted anywhere inside a learner or a bundle, on write
as on read: what is verified is exactly what is served.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Container, Iterable, Mapping

from .atomic import fault_point, fsync_path, fsync_tree, publish_modes  # noqa: F401 - re-exported for writers
from .bundle_schema import (  # noqa: F401 - re-exported: the names every reader and writer shares
    CLASSIFIER_INT8_ONNX,
    CLASSIFIER_ONNX,
    FORMAT_NAME,
    FORMAT_VERSION,
    GENERATOR_ONNX,
    LEARNER_DIR,
    MANIFEST,
    MANIFEST_DIGEST,
    RESERVED_NAMES,
    SIGNATURE,
    SUPPORTED_VERSIONS,
    WRITE_VERSIONS,
)
from .errors import BundleError, BundleIntegrityError, BundleMissingFileError, BundleVersionError
from .saved_dir import (  # noqa: F401 - re-exported: saving a learner in place
    check_save_target,
    clean_staging,
    commit_dir,
    owned_entries,
    recover_dir,
    staging_dir,
)

def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON and fsync it; callers commit it by renaming its directory."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if p.is_symlink():
        raise BundleIntegrityError(f"{p} is a symlink; a learner or bundle holds only plain files")
    if not p.is_file():
        raise BundleMissingFileError(f"{p} is missing")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleIntegrityError(f"{p} is not valid JSON: {e}") from None


def file_entries(
    directory: Path, names: Iterable[str], known: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``{name: {sha256, bytes}}``; names in ``known`` reuse that entry (same size required) instead of hashing again.

    ``known`` is for files this process hashed a moment ago while writing
    them (a learner saved inside a bundle version has its own manifest):
    every file of a new version is hashed once at export.
    """
    known = known or {}
    entries = {}
    for name in sorted(names):
        p = directory / name
        size = p.stat().st_size
        prior = known.get(name)
        if prior is not None and prior.get("bytes") == size and isinstance(prior.get("sha256"), str):
            entries[name] = {"sha256": prior["sha256"], "bytes": size}
        else:
            entries[name] = {"sha256": sha256_file(p), "bytes": size}
    return entries


def manifest_digest(manifest: Any) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace, UTF-8).

    Canonical rather than raw bytes, so re-indenting a manifest changes
    nothing while any change of content does.
    """
    try:
        canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BundleIntegrityError(f"manifest cannot be canonicalised: {e}") from None
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _digest_line(manifest: Any) -> str:
    return f"{manifest_digest(manifest)}\n"


def write_manifest(
    directory: str | os.PathLike[str],
    kind: str,
    files: Iterable[str],
    *,
    known: Mapping[str, Mapping[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Hash ``files`` (relative to ``directory``; see :func:`file_entries` for ``known``) and write the manifest,
    then its digest, last. ``fields`` may not set the envelope (format, version, kind, files)."""
    d = Path(directory)
    manifest = {
        **fields,
        "format": FORMAT_NAME,
        "format_version": WRITE_VERSIONS.get(kind, FORMAT_VERSION),
        "kind": kind,
        "files": file_entries(d, files, known),
    }
    write_json(d / MANIFEST, manifest)
    digest = _digest_line(json.loads((d / MANIFEST).read_text(encoding="utf-8")))  # what a reader will parse
    with open(d / MANIFEST_DIGEST, "w", encoding="ascii") as f:
        f.write(digest)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def scan_tree(directory: str | os.PathLike[str]) -> list[str]:
    """Every regular file under ``directory`` (POSIX relative paths); BundleIntegrityError on anything else.

    A symlink (to a file, a directory or nowhere), a FIFO or a device would
    let what is served differ from what was verified, or block a reader.
    """
    root = Path(directory)
    files: list[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise BundleError(f"cannot list {d}: {e}") from e
        for e in entries:
            p = Path(e.path)
            if e.is_symlink():
                raise BundleIntegrityError(
                    f"{p} is a symlink (to {os.readlink(p)!r}); a learner or bundle holds only plain files and directories"
                )
            if e.is_dir(follow_symlinks=False):
                stack.append(p)
            elif e.is_file(follow_symlinks=False):
                files.append(p.relative_to(root).as_posix())
            else:
                raise BundleIntegrityError(f"{p} is not a regular file or directory")
    return sorted(files)


def _check_entries(path: Path, files: Any) -> dict[str, dict[str, Any]]:
    """The files table of a manifest, every entry type-checked (JSON edits must not crash a reader)."""
    if not isinstance(files, dict):
        raise BundleIntegrityError(f"{path} has no 'files' table (found {type(files).__name__})")
    for name, entry in files.items():
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts or name != rel.as_posix() or name in RESERVED_NAMES:
            raise BundleIntegrityError(f"manifest entry {name!r} in {path} is not a plain relative file path")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or len(entry["sha256"]) != 64
            or not isinstance(entry.get("bytes"), int)
            or isinstance(entry.get("bytes"), bool)
            or entry["bytes"] < 0
        ):
            raise BundleIntegrityError(
                f"manifest entry {name!r} in {path} is {entry!r}, expected {{'sha256': 64 hex digits, 'bytes': int >= 0}}"
            )
    return files


def read_manifest(
    directory: str | os.PathLike[str],
    kind: str | None = None,
    *,
    required: Iterable[str] = (),
    strict: bool = False,
    hashes: bool | Container[str] = True,
) -> dict[str, Any]:
    """Read and check the manifest, its digest, then every file it lists. Raises a BundleError naming the problem.

    ``required``: names the caller will read; each must be listed (an
    unlisted file is never trusted). ``strict``: every file in the directory
    must be listed (bundle versions, which only the store writes). Symlinks
    and special files anywhere inside are refused either way. ``hashes``:
    True hashes every listed file; False checks sizes only (for files the
    caller verified a moment ago: hashing a large generator twice costs
    seconds on a device); a set of names hashes those and checks only the
    size of the rest (a serving-only open hashes what it loads; the rest is
    verified when first needed, :func:`verify_files`). Returns the manifest
    as written (older format versions are lifted by
    :func:`abd_edge.bundle_schema.migrate` where they are parsed).
    """
    d = Path(directory)
    if not d.is_dir():
        raise BundleMissingFileError(f"{d} is not a directory")
    present = scan_tree(d)
    mpath = d / MANIFEST
    if MANIFEST not in present:
        raise BundleMissingFileError(f"{mpath} is missing")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleIntegrityError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{mpath} is not an {FORMAT_NAME} manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise BundleVersionError(
            f"{mpath} has format_version {version!r}; this release reads {list(SUPPORTED_VERSIONS)}"
        )
    # The format version is checked first so a newer release's bundle is named as such.
    dpath = d / MANIFEST_DIGEST
    if MANIFEST_DIGEST not in present:
        raise BundleMissingFileError(
            f"{dpath} is missing: the manifest is not covered by a digest "
            "(written by an older abd-edge, or removed); save or export it again"
        )
    expected = dpath.read_bytes()
    if expected != _digest_line(manifest).encode("ascii"):
        raise BundleIntegrityError(
            f"{mpath} does not match its digest in {dpath} (the manifest was edited or damaged)"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(f"{d} holds a {manifest.get('kind')!r}, expected a {kind!r}")
    files = _check_entries(mpath, manifest.get("files"))
    for name in required:
        if name not in files:
            raise BundleIntegrityError(f"{d / name} is read but not listed in {mpath}, so it cannot be verified")
    if strict:
        unlisted = sorted(set(present) - set(files) - RESERVED_NAMES)
        if unlisted:
            raise BundleIntegrityError(f"{d} holds files its manifest does not list: {unlisted}")
    verify_files(d, files, hashes=hashes)
    return manifest


def verify_files(directory: Path, files: Mapping[str, Any], *, hashes: bool | Container[str] = True) -> None:
    """Every listed file present, plain, of its listed size, and (for those ``hashes`` selects) of its sha256."""
    for name, entry in files.items():
        p = directory / name
        if p.is_symlink():
            raise BundleIntegrityError(f"{p} is a symlink; a learner or bundle holds only plain files")
        if not p.is_file():
            raise BundleMissingFileError(f"{p} is listed in the manifest but missing")
        size = p.stat().st_size
        if size != entry.get("bytes"):
            raise BundleIntegrityError(f"{p} has {size} bytes, the manifest says {entry.get('bytes')} (truncated or edited)")
        if hashes is False or (hashes is not True and name not in hashes):
            continue
        digest = sha256_file(p)
        if digest != entry.get("sha256"):
            raise BundleIntegrityError(f"{p} has sha256 {digest}, the manifest says {entry.get('sha256')} (edited)")
