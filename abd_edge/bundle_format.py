"""The on-disk format shared by saved learners and deployment bundles.

This module is deliberately free of torch (and of anything heavy): the
training side writes through it and the device runtime reads through it, so
both agree on one manifest schema, one hashing rule and one way to commit a
directory atomically. A manifest lists every file with its size and sha256;
nothing in a directory is trusted before the manifest has been checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import BundleError, BundleIntegrityError, BundleMissingFileError, BundleVersionError

MANIFEST = "manifest.json"
FORMAT_NAME = "abd-edge"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# The files of a deployment bundle version (abd_edge.export writes them, abd_edge.runtime reads them).
CLASSIFIER_ONNX = "classifier.onnx"
CLASSIFIER_INT8_ONNX = "classifier.int8.onnx"
GENERATOR_ONNX = "generator.onnx"
LEARNER_DIR = "learner"

#: Environment variable read by :func:`fault_point` (a test hook, see there).
FAULT_ENV = "ABD_EDGE_FAULT_POINT"


def fault_point(name: str) -> None:
    """Test hook: die abruptly at the named step if ``ABD_EDGE_FAULT_POINT`` says so.

    Crash safety cannot be tested by raising exceptions (``finally`` blocks
    and context managers would still run), so the writers of bundles call
    ``fault_point("staged")``, ``fault_point("renamed")``, ... between their
    durable steps, and a test sets ``ABD_EDGE_FAULT_POINT=<name>`` in a child
    process to have it SIGKILLed exactly there, as a power cut would. When the
    variable is unset (always, in production) this is a dictionary lookup.
    """
    if os.environ.get(FAULT_ENV) == name:
        # SIGKILL cannot be caught or cleaned up after: nothing runs past here.
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str | os.PathLike[str]) -> None:
    """fsync every regular file and every directory under ``directory`` (itself included).

    A directory is only durably committed by a rename if its contents reached
    the disk first, including files in subdirectories; directories are
    synced after their contents so their entries are durable too.
    """
    root = Path(directory)
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                fsync_path(p)
        fsync_path(dirpath)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON and fsync it; callers commit it by renaming its directory."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise BundleMissingFileError(f"{p} is missing")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleIntegrityError(f"{p} is not valid JSON: {e}") from None


def file_entries(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    entries = {}
    for name in sorted(names):
        p = directory / name
        entries[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return entries


def write_manifest(directory: str | os.PathLike[str], kind: str, files: Iterable[str], **fields: Any) -> dict[str, Any]:
    """Hash ``files`` (relative to ``directory``) and write the manifest last."""
    d = Path(directory)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "files": file_entries(d, files),
        **fields,
    }
    write_json(d / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read and check the manifest, then every file it lists. Raises a BundleError naming the problem."""
    d = Path(directory)
    if not d.is_dir():
        raise BundleMissingFileError(f"{d} is not a directory")
    manifest = read_json(d / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{d / MANIFEST} is not an {FORMAT_NAME} manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise BundleVersionError(
            f"{d / MANIFEST} has format_version {version!r}; this release reads {list(SUPPORTED_VERSIONS)}"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(f"{d} holds a {manifest.get('kind')!r}, expected a {kind!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleIntegrityError(f"{d / MANIFEST} has no 'files' table")
    verify_files(d, files)
    return manifest


def verify_files(directory: Path, files: dict[str, Any]) -> None:
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise BundleIntegrityError(f"manifest entry {name!r} in {directory} is {entry!r}, expected {{'sha256': ..., 'bytes': ...}}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleIntegrityError(f"manifest entry {name!r} points outside {directory}")
        p = directory / name
        if not p.is_file():
            raise BundleMissingFileError(f"{p} is listed in the manifest but missing")
        size = p.stat().st_size
        if size != entry.get("bytes"):
            raise BundleIntegrityError(f"{p} has {size} bytes, the manifest says {entry.get('bytes')} (truncated or edited)")
        digest = sha256_file(p)
        if digest != entry.get("sha256"):
            raise BundleIntegrityError(f"{p} has sha256 {digest}, the manifest says {entry.get('sha256')} (edited)")


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """A fresh empty directory beside ``target`` (same filesystem, so rename is atomic)."""
    t = Path(target)
    t.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{t.name}.tmp-", dir=t.parent))


def _aside_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def commit_dir(staged: Path, target: str | os.PathLike[str]) -> None:
    """Move a fully written, fsynced directory into place.

    An existing target is first renamed aside (to ``.NAME.old``) and deleted
    only after the new one is in place, so at every instant either the old or
    the new complete directory exists under a known name;
    :func:`recover_dir` puts the old one back if a crash came in between.
    """
    t = Path(target)
    fsync_tree(staged)
    recover_dir(t)
    old = None
    if t.exists():
        old = _aside_name(t)
        if old.exists():
            shutil.rmtree(old)
        os.replace(t, old)
        fsync_path(t.parent)
    fault_point("commit_dir_aside")
    os.replace(staged, t)
    fsync_path(t.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: str | os.PathLike[str]) -> bool:
    """Undo a :func:`commit_dir` interrupted between its two renames; True if it did.

    If ``target`` is missing but its renamed-aside predecessor exists, that
    predecessor is the last complete version: rename it back. If both
    exist, the commit finished and only the deletion of the old copy was
    interrupted: delete it.
    """
    t = Path(target)
    old = _aside_name(t)
    if not old.exists():
        return False
    if t.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.replace(old, t)
    fsync_path(t.parent)
    return True
