"""The on-disk format shared by saved learners and deployment bundles.

This module is deliberately free of torch (and of anything heavy): the
training side writes through it and the device runtime reads through it, so
both agree on one manifest schema, one hashing rule and one way to commit a
directory atomically. A manifest lists every file with its size and sha256;
nothing in a directory is trusted before the manifest has been checked.

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
import re
import shutil
import signal
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

try:  # POSIX only: flock marks a staging directory as in use
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from .errors import BundleError, BundleIntegrityError, BundleMissingFileError, BundleVersionError

MANIFEST = "manifest.json"
#: sha256 of the manifest's canonical JSON, written beside it (see :func:`manifest_digest`).
MANIFEST_DIGEST = "manifest.sha256"
#: ed25519 signature over the manifest digest (abd_edge.signing); it signs the manifest, so the manifest cannot list it.
SIGNATURE = "signature.json"
#: Names beside the manifest that the manifest cannot list (they cover the manifest itself).
RESERVED_NAMES = frozenset({MANIFEST, MANIFEST_DIGEST, SIGNATURE})
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


def publish_modes(directory: str | os.PathLike[str]) -> None:
    """Directories 0755 and files 0644: staging directories are created 0700 by mkdtemp,
    and a committed learner or bundle must be readable by the service that serves it."""
    root = Path(directory)
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink():
                os.chmod(p, 0o644)


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
    if p.is_symlink():
        raise BundleIntegrityError(f"{p} is a symlink; a learner or bundle holds only plain files")
    if not p.is_file():
        raise BundleMissingFileError(f"{p} is missing")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleIntegrityError(f"{p} is not valid JSON: {e}") from None


def file_entries(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    entries = {}
    for name in sorted(names):
        p = directory / name
        entries[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
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


def write_manifest(directory: str | os.PathLike[str], kind: str, files: Iterable[str], **fields: Any) -> dict[str, Any]:
    """Hash ``files`` (relative to ``directory``) and write the manifest, then its digest, last."""
    d = Path(directory)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "files": file_entries(d, files),
        **fields,
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
    hashes: bool = True,
) -> dict[str, Any]:
    """Read and check the manifest, its digest, then every file it lists. Raises a BundleError naming the problem.

    ``required``: names the caller will read; each must be listed (an
    unlisted file is never trusted). ``strict``: every file in the directory
    must be listed (bundle versions, which only the store writes). Symlinks
    and special files anywhere inside are refused either way. ``hashes=False``
    checks sizes only: for a caller that verified the same immutable files
    a moment ago (hashing a large generator twice costs seconds on a device).
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


def verify_files(directory: Path, files: dict[str, Any], *, hashes: bool = True) -> None:
    for name, entry in files.items():
        p = directory / name
        if p.is_symlink():
            raise BundleIntegrityError(f"{p} is a symlink; a learner or bundle holds only plain files")
        if not p.is_file():
            raise BundleMissingFileError(f"{p} is listed in the manifest but missing")
        size = p.stat().st_size
        if size != entry.get("bytes"):
            raise BundleIntegrityError(f"{p} has {size} bytes, the manifest says {entry.get('bytes')} (truncated or edited)")
        if not hashes:
            continue
        digest = sha256_file(p)
        if digest != entry.get("sha256"):
            raise BundleIntegrityError(f"{p} has sha256 {digest}, the manifest says {entry.get('sha256')} (edited)")


# ---------------------------------------------------------------- saving a directory in place

STAGING_INFIX = ".tmp-"
#: safetensors writes ``.tmpXXXXXX`` and renames it: a kill mid-write leaves one in a staging directory.
_WRITER_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def _staging_prefix(target: Path) -> str:
    return f".{target.name}{STAGING_INFIX}"


def owned_entries(directory: Path, kind: str) -> set[str] | None:
    """The top-level names a saved ``kind`` directory consists of, from its manifest; None if it is not one.

    Only a directory whose manifest parses, is ours and is of ``kind`` may be
    replaced, and only these names of it deleted: anything else is not ours.
    """
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME or manifest.get("kind") != kind:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(n, str) and n for n in files):
        return None
    return set(RESERVED_NAMES) | {Path(n).parts[0] for n in files if Path(n).parts and not Path(n).is_absolute()}


def check_save_target(target: Path, kind: str) -> None:
    """Refuse a target whose replacement would delete or hide anything this library did not write.

    Allowed: a missing path, an empty directory, or a directory holding a
    saved ``kind`` and nothing else (our own staging leftovers aside).
    """
    if target.is_symlink():
        raise BundleError(f"{target} is a symlink; save to a real directory path (the link is left as it is)")
    if not target.exists():
        return
    if not target.is_dir():
        raise BundleError(f"{target} exists and is not a directory; refusing to replace it (save to a new or empty directory)")
    names = {e.name for e in os.scandir(target)}
    if not names:
        return
    owned = owned_entries(target, kind)
    if owned is None:
        shown = sorted(names)[:5]
        raise BundleError(
            f"{target} is not empty and does not hold a saved {kind} (it holds {shown}"
            f"{' ...' if len(names) > 5 else ''}); refusing to replace it: save to a new or empty directory"
        )
    foreign = sorted(names - owned)
    if foreign:
        raise BundleError(
            f"{target} holds a saved {kind} and also files it did not write: {foreign[:5]}"
            f"{' ...' if len(foreign) > 5 else ''}; refusing to replace it (move them out, or save elsewhere)"
        )
    for name in owned & names:
        p = target / name
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise BundleError(f"{p} is not a plain file or directory; refusing to replace {target}")


def _remove_owned(directory: Path, kind: str) -> bool:
    """Delete a saved ``kind`` directory, but only the entries its manifest names; True if it is gone.

    Anything else found inside (written there by someone else since it was
    checked) is left in place with a warning, never deleted.
    """
    owned = owned_entries(directory, kind) or set()
    # The manifest goes last: it is what tells a resumed removal (after a crash here) which entries are ours.
    for name in sorted(owned - {MANIFEST}) + [MANIFEST]:
        p = directory / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            pass
    try:
        directory.rmdir()
        return True
    except OSError:
        warnings.warn(f"{directory} still holds files abd-edge did not write; left in place", stacklevel=3)
        return False


def clean_staging(target: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Remove ``.NAME.tmp-*`` staging directories that killed saves left beside ``target``; return them.

    A staging directory in use holds an flock on itself (see
    :func:`staging_dir`), so a concurrent save's is skipped. Only ``names``
    (the files a save writes) are deleted; a directory holding anything else
    is left alone.
    """
    t = Path(target)
    removed: list[Path] = []
    if fcntl is None or not t.parent.is_dir():
        return removed
    allowed = set(names) | RESERVED_NAMES
    for e in os.scandir(t.parent):
        if not e.name.startswith(_staging_prefix(t)) or e.is_symlink() or not e.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a save is writing it right now
            inside = list(os.scandir(e.path))
            if any(
                (x.name not in allowed and not _WRITER_TEMP.fullmatch(x.name)) or not x.is_file(follow_symlinks=False)
                for x in inside
            ):
                continue
            for x in inside:
                os.unlink(x.path)
            os.rmdir(e.path)
            removed.append(Path(e.path))
        finally:
            os.close(fd)
    return removed


@contextmanager
def staging_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh empty directory beside ``target`` (same filesystem, so rename is atomic), flocked while in use.

    Removed if the block raises; after a SIGKILL it is left behind and
    removed by :func:`clean_staging` on the next save or load.
    """
    t = Path(target)
    t.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=_staging_prefix(t), dir=t.parent))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    finally:
        os.close(fd)


def _aside_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def commit_dir(staged: Path, target: str | os.PathLike[str], kind: str) -> None:
    """Move a fully written directory into place, replacing a saved ``kind`` there.

    The caller has checked the target with :func:`check_save_target`. An
    existing target is first renamed aside (to ``.NAME.old``) and deleted,
    its own entries only, after the new one is in place, so at every instant
    either the old or the new complete directory exists under a known name;
    :func:`recover_dir` puts the old one back if a crash came in between.
    """
    t = Path(target)
    publish_modes(staged)
    fsync_tree(staged)
    recover_dir(t, kind)
    old = None
    if t.exists():
        old = _aside_name(t)
        if old.exists() and not _remove_owned(old, kind):
            raise BundleError(f"{old} holds files abd-edge did not write; move them out before saving to {t}")
        os.replace(t, old)
        fsync_path(t.parent)
    fault_point("commit_dir_aside")
    os.replace(staged, t)
    fsync_path(t.parent)
    if old is not None:
        _remove_owned(old, kind)


def recover_dir(target: str | os.PathLike[str], kind: str) -> bool:
    """Undo a :func:`commit_dir` interrupted between its two renames; True if it did.

    If ``target`` is missing but its renamed-aside predecessor exists, that
    predecessor is the last complete version: rename it back. If both
    exist, the commit finished and only the deletion of the old copy was
    interrupted: delete it (its own entries only).
    """
    t = Path(target)
    old = _aside_name(t)
    if old.is_symlink() or not old.is_dir():
        return False
    if t.exists() or t.is_symlink():
        _remove_owned(old, kind)
        return False
    os.replace(old, t)
    fsync_path(t.parent)
    return True
