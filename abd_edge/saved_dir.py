"""Saving a directory in place (a saved learner): staging beside it, the swap, and recovery after a crash.

A learner is saved over its previous save. The new directory is staged
beside the target (same filesystem), committed with the one protocol of
:mod:`abd_edge.atomic`, and the old one is moved aside first and deleted
after, only the entries its own manifest names: a save never deletes or
hides what this library did not write. Stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

try:  # POSIX only: flock marks a staging directory as in use
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from .atomic import commit, fault_point, fsync_path
from .bundle_schema import FORMAT_NAME, MANIFEST, RESERVED_NAMES
from .errors import BundleError

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
    recover_dir(t, kind)
    old = None

    def move_old_aside() -> None:
        nonlocal old
        if t.exists():
            old = _aside_name(t)
            if old.exists() and not _remove_owned(old, kind):
                raise BundleError(f"{old} holds files abd-edge did not write; move them out before saving to {t}")
            os.replace(t, old)
            fsync_path(t.parent)
        fault_point("commit_dir_aside")

    commit(staged, t, before_rename=move_old_aside)
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
