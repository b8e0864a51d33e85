"""The one atomic commit protocol for everything abd-edge writes: files, saved learners, bundle versions.

Whatever is written (an ONNX file, a pointer file such as a bundle's
``CURRENT``, a saved learner directory, a bundle version) is first written
completely under a temporary name in the destination's directory, then
:func:`commit` makes it durable (fsync of every file and directory, modes
0644/0755 so another user's serving process can read it) and renames it onto
its final name, and fsyncs the parent directory so the rename itself
survives a power cut. A reader, or a crash at any instant, sees either the
previous object or the complete new one, never a prefix.

Callers differ only in what happens around the rename (the bundle store
records a PENDING version before it and switches CURRENT after it; a learner
save moves the old directory aside first). Stdlib only: the device runtime
imports it.
"""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import BundleError

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


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - directories cannot be fsynced on some platforms
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def publish_modes(path: str | os.PathLike[str]) -> None:
    """Directories 0755 and files 0644 (mkstemp/mkdtemp create 0600/0700): a committed learner or
    bundle must be readable by the service that serves it, which may run as another user."""
    root = Path(path)
    if not root.is_dir():
        if not root.is_symlink():
            os.chmod(root, 0o644)
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink():
                os.chmod(p, 0o644)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync a file, or every regular file and directory under a directory (itself included).

    A directory is only durably committed by a rename if its contents reached
    the disk first, including files in subdirectories; directories are
    synced after their contents so their entries are durable too.
    """
    root = Path(path)
    if not root.is_dir():
        fsync_path(root)
        return
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                fsync_path(p)
        fsync_path(dirpath)


def commit(
    staged: str | os.PathLike[str],
    final: str | os.PathLike[str],
    *,
    replace: bool = True,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """The commit protocol: make ``staged`` (a file or a directory tree) durable and readable, rename it onto ``final``.

    ``staged`` must be in ``final``'s directory (one filesystem: the rename
    is atomic). ``replace=False`` refuses to overwrite an existing ``final``
    (a committed bundle version is never overwritten). ``before_rename``
    runs after everything is durable and right before the rename (the store
    records its PENDING pointer there).
    """
    src, dst = Path(staged), Path(final)
    if src.parent.resolve() != dst.parent.resolve():
        raise BundleError(f"cannot commit {src} onto {dst}: a staged object must sit in its destination's directory")
    publish_modes(src)
    fsync_tree(src)
    if not replace and (dst.exists() or dst.is_symlink()):
        raise BundleError(f"{dst} already exists; refusing to overwrite it")
    if before_rename is not None:
        before_rename()
    os.replace(src, dst)
    fsync_path(dst.parent)


@contextmanager
def staged_file(final: str | os.PathLike[str], *, tmp_name: str | None = None, fault: str | None = None) -> Iterator[Path]:
    """A temporary file beside ``final`` to write; committed onto ``final`` (:func:`commit`) when the block succeeds.

    The block writes the file and may check it (a check that raises keeps it
    away from ``final``); on any exception the temporary file is removed.
    ``tmp_name`` gives it a fixed name (pointer files, so a crashed writer's
    leftover is known); whatever sits there is removed first and the file
    is created without following a symlink, so a planted link is never
    written through. The fault point ``fault``, if given, fires between the
    write and the commit.
    """
    dst = Path(final)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if tmp_name is None:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        tmp = Path(name)
    else:
        tmp = dst.parent / tmp_name
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    os.close(fd)
    try:
        yield tmp
        if fault is not None:
            fault_point(fault)
        commit(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(final: str | os.PathLike[str], text: str, *, tmp_name: str | None = None) -> None:
    """Replace ``final`` with ``text`` (ASCII/UTF-8) atomically and durably."""
    with staged_file(final, tmp_name=tmp_name) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)


def remove_durably(path: str | os.PathLike[str]) -> None:
    """Unlink a file and fsync its directory; nothing if it is absent."""
    p = Path(path)
    try:
        p.unlink()
    except FileNotFoundError:
        return
    fsync_path(p.parent)
