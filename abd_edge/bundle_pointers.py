"""The small mutable files of a bundle store: version names, the CURRENT / PENDING pointers, the writer lock.

Everything else in a bundle directory is immutable once committed; these
few files change, so each is replaced atomically (:mod:`abd_edge.atomic`)
or, for the lock, opened so that a planted link can never redirect a write.
Stdlib only: the device runtime imports it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:  # POSIX only; the device runtime targets Linux, but importing must not fail elsewhere.
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

from .atomic import remove_durably, write_text_atomic
from .errors import BundleError, BundleIntegrityError, BundleLockedError

_VERSION_RE = re.compile(r"v(\d{6,})")
_LOCK_POLL_S = 0.05
#: A lock file holds one pid; anything larger is not ours and is never truncated.
_LOCK_MAX_BYTES = 32


def parse_version_name(name: str) -> int | None:
    """The number of a version name like ``"v000012"``, or None if ``name`` is not one."""
    m = _VERSION_RE.fullmatch(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


def format_version_name(number: int) -> str:
    """``v%06d``: fixed width so names also sort in commit order in a file listing."""
    return f"v{number:06d}"


def read_pointer(path: Path) -> str | None:
    """The version named by a one-line pointer file; None when absent; BundleError when garbled."""
    if path.is_symlink():
        raise BundleIntegrityError(f"{path} is a symlink; a bundle holds only plain files and directories")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e}") from e
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.endswith("\n"):
        text = text[:-1]
    if text is None or parse_version_name(text) is None:
        raise BundleError(f"{path} holds {raw[:40]!r}; expected one line naming a version, such as 'v000001'")
    return text


def read_pointer_lenient(path: Path) -> str | None:
    try:
        return read_pointer(path)
    except BundleError:
        return None


def pointer_tmp_name(path: Path) -> str:
    """The fixed temporary name a pointer is written under (collected after a crash)."""
    return path.name + ".tmp"


def write_pointer(path: Path, version: str) -> None:
    """Replace a pointer file atomically and durably (the commit protocol of :mod:`abd_edge.atomic`)."""
    write_text_atomic(path, version + "\n", tmp_name=pointer_tmp_name(path))


def remove_pointer(path: Path) -> None:
    remove_durably(path)


class WriterLock:
    """The exclusive writer lock on ``ROOT/.lock`` (fcntl.flock), re-entrant within one thread.

    The kernel drops an flock when its holder dies, so a crashed writer
    never leaves the store locked. The holder's pid is written into the
    file for error messages.
    """

    def __init__(self, root: Path, name: str, timeout_s: float) -> None:
        self.root, self.path, self.timeout_s = root, root / name, timeout_s
        # Re-entrancy within one thread (flock on a second descriptor would otherwise block against ourselves).
        self._owner: int | None = None
        self._depth = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Wait up to ``timeout_s`` (polling), then raise BundleLockedError naming the holder's pid."""
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if fcntl is None:  # pragma: no cover
            raise BundleError(f"cannot lock {self.path}: fcntl.flock is not available on this platform")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(self.path)
        try:
            self._acquire(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            self._owner, self._depth = me, 1
            try:
                yield
            finally:
                self._owner, self._depth = None, 0
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise BundleError(f"cannot lock {self.path}: {e}") from e
            now = time.monotonic()
            if now >= deadline:
                holder = _read_pid(fd)
                who = f"pid {holder}" if holder is not None else "pid unknown"
                raise BundleLockedError(
                    f"{self.root} is being updated by another process ({who}); "
                    f"gave up waiting for {self.path} after {self.timeout_s:g} s "
                    "(retry later or pass a larger lock_timeout_s)"
                )
            time.sleep(min(_LOCK_POLL_S, deadline - now))


def _open_lock_file(path: Path) -> int:
    """Open (creating) the lock file without following a symlink, and only if it is ours to rewrite.

    The holder's pid is written into the lock file, so a symlink or a hard
    link planted at ``.lock`` would otherwise have its target truncated.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise BundleIntegrityError(f"{path} is a symlink; refusing to use it as the bundle's lock file") from e
        raise BundleError(f"cannot open the lock file {path}: {e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > _LOCK_MAX_BYTES:
            raise BundleIntegrityError(
                f"{path} is not a lock file written by abd-edge (a {'hard-linked ' if st.st_nlink != 1 else ''}"
                f"{'regular file' if stat.S_ISREG(st.st_mode) else 'special file'} of {st.st_size} bytes); "
                "refusing to overwrite it: remove it if it is yours"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
