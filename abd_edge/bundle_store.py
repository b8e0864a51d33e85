"""A versioned, crash-safe store of deployment bundles in one directory.

A device keeps its deployed model in a bundle directory that is updated in
place, possibly while the device loses power, and possibly while a second
updater process starts. This module makes every update all-or-nothing and
keeps a few old versions for rollback. It is stdlib only on purpose: the
device runtime imports it where torch and numpy may be absent.

Layout of a bundle directory ``ROOT``::

    ROOT/CURRENT            one line "v000002": the committed current version;
                            replaced atomically (write CURRENT.tmp, fsync, rename)
    ROOT/PENDING            present only during a commit (or after a crash in
                            one): names the version being committed, so that a
                            crash between its rename and the CURRENT switch can
                            be told apart from a version that was rolled back from
    ROOT/.lock              lock file for writers (fcntl.flock); holds the
                            holder's pid for error messages
    ROOT/versions/v000001/  complete, immutable versions; each holds a
                            manifest.json (kind "bundle", written last) listing
                            every file in it, subdirectories included
    ROOT/versions/.staging-*  versions being written (garbage after a crash)
    ROOT/versions/.trash-*    versions being deleted (garbage after a crash)

Readers take no lock: they read CURRENT, then verify the immutable version it
names against its manifest. Writers serialise on ``ROOT/.lock``.

The commit steps call :func:`abd_edge.bundle_format.fault_point` with
"staged", "renamed" and "switched" so tests can SIGKILL a writer between
them and check that the store recovers.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Container, Iterable, Iterator, Mapping

from .atomic import commit, fault_point, fsync_path
from .bundle_format import MANIFEST, RESERVED_NAMES, read_json, read_manifest, write_manifest
from .bundle_pointers import (
    WriterLock,
    format_version_name,
    parse_version_name,
    pointer_tmp_name,
    read_pointer,
    read_pointer_lenient,
    remove_pointer,
    write_pointer,
)
from .bundle_schema import BUNDLE_KIND, Manifest
from .errors import BundleError, BundleIntegrityError, BundleMissingFileError, ConfigError

__all__ = ["BundleStore", "StagedVersion", "KIND", "format_version_name", "parse_version_name"]

#: The ``kind`` recorded in every bundle version's manifest.
KIND = BUNDLE_KIND
CURRENT = "CURRENT"
PENDING = "PENDING"
LOCK = ".lock"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class StagedVersion:
    """A version being written by :meth:`BundleStore.new_version`.

    The caller writes its files under ``path`` and then writes ``manifest.json``
    last (with ``version`` and ``parent_version`` fields equal to these), either
    through :func:`abd_edge.bundle_format.write_manifest` or :meth:`write_manifest`.
    """

    path: Path
    version: str
    parent_version: str | None

    def _all_files(self) -> list[str]:
        return [
            p.relative_to(self.path).as_posix()
            for p in self.path.rglob("*")
            if p.is_file() and p.relative_to(self.path).as_posix() not in RESERVED_NAMES
        ]

    def write_manifest(
        self, files: Iterable[str] | None = None, *, known: Mapping[str, Mapping[str, Any]] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Write the manifest with the fields the store checks, so callers cannot get them wrong.

        ``files`` defaults to every file under ``path`` (as POSIX relative
        paths); ``created`` defaults to the current UTC time; ``known``:
        entries hashed a moment ago (see :func:`abd_edge.bundle_format.file_entries`).
        """
        fields.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return write_manifest(
            self.path, KIND, self._all_files() if files is None else files, known=known,
            version=self.version, parent_version=self.parent_version, **fields,
        )

    def write(self, manifest: Manifest, *, known: Mapping[str, Mapping[str, Any]] | None = None) -> Manifest:
        """Write a typed bundle manifest listing every file under ``path``; returns it with its files table.

        Each file is hashed here, once (``known`` entries are reused); the
        store's commit then checks sizes only.
        """
        fields = manifest.to_dict()
        for key in ("format", "format_version", "kind", "files", "version", "parent_version"):
            fields.pop(key)
        if fields.get("created") is None:
            fields.pop("created")
        written = self.write_manifest(known=known, **fields)
        return Manifest.from_dict(written, f"{self.path / MANIFEST}")


class BundleStore:
    """Versioned deployment bundles under one root directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, keep_versions: int = 3, lock_timeout_s: float = 0.0) -> None:
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 1:
            raise ConfigError(f"keep_versions={keep_versions!r}: expected an int >= 1 (the current version is always kept)")
        if isinstance(lock_timeout_s, bool) or not isinstance(lock_timeout_s, (int, float)) or not (
            math.isfinite(lock_timeout_s) and lock_timeout_s >= 0
        ):
            raise ConfigError(f"lock_timeout_s={lock_timeout_s!r}: expected a finite number of seconds >= 0")
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.lock_timeout_s = float(lock_timeout_s)
        self._lock = WriterLock(self.root, LOCK, self.lock_timeout_s)

    # ------------------------------------------------------------------ reading

    @property
    def versions_root(self) -> Path:
        return self.root / VERSIONS

    def exists(self) -> bool:
        """True once a version has been committed (CURRENT is present)."""
        return (self.root / CURRENT).is_file()

    def current_version(self) -> str | None:
        """The version CURRENT names; None when absent; BundleError when it is garbled."""
        return read_pointer(self.root / CURRENT)

    def _check_not_symlink(self, path: Path) -> None:
        if path.is_symlink():
            raise BundleIntegrityError(
                f"{path} is a symlink (to {os.readlink(path)!r}); a bundle holds only plain files and directories"
            )

    def version_dir(self, version: str) -> Path:
        """The directory of ``version``; the name is validated so it cannot point outside the store."""
        if parse_version_name(version) is None:
            raise BundleError(
                f"{version!r} is not a bundle version name; expected 'v' and six digits, e.g. 'v000001'"
            )
        return self.versions_root / version

    def read(self, version: str | None = None, *, hashes: bool | Container[str] = True) -> tuple[str, dict[str, Any]]:
        """``(version, manifest)`` of the current (or the given) version, every file verified.

        Takes no lock: versions are immutable and CURRENT is replaced
        atomically. If the version CURRENT named disappears while being read
        (pruned by a writer that committed twice meanwhile), reading restarts
        from the new CURRENT.
        """
        if version is not None:
            return version, self._verified_manifest(version, via_current=False, hashes=hashes)
        for attempt in range(3):
            current = self.current_version()
            if current is None:
                raise BundleMissingFileError(
                    f"{self.root / CURRENT} is missing: {self.root} holds no committed bundle version"
                )
            try:
                return current, self._verified_manifest(current, via_current=True, hashes=hashes)
            except BundleMissingFileError:
                if attempt < 2 and self.current_version() != current:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def versions(self) -> list[str]:
        """Committed versions present, oldest first (a version being committed is not one yet)."""
        root = self.versions_root
        if not root.is_dir():
            return []
        names = {
            e.name for e in os.scandir(root) if parse_version_name(e.name) is not None and e.is_dir(follow_symlinks=False)
        }
        pending = read_pointer_lenient(self.root / PENDING)
        if pending is not None and pending != read_pointer_lenient(self.root / CURRENT):
            names.discard(pending)
        return sorted(names, key=lambda n: parse_version_name(n) or 0)

    def history(self) -> list[dict[str, Any]]:
        """One dict per kept version, oldest first, from the manifests (files are not re-hashed).

        A manifest that cannot be read yields an entry with an ``error``
        message instead of failing the whole listing: history is what one
        looks at when something is wrong. The store's own keys win over
        same-named keys of the manifest's ``summary``.
        """
        current = read_pointer_lenient(self.root / CURRENT)
        out = []
        for v in self.versions():
            path = self.versions_root / v / MANIFEST
            entry: dict[str, Any] = {}
            try:
                manifest = read_json(path)
                if not isinstance(manifest, dict):
                    raise BundleIntegrityError(f"{path} holds a {type(manifest).__name__}, expected an object")
            except BundleError as e:
                entry = {"version": v, "parent_version": None, "created": None, "current": v == current, "error": str(e)}
                out.append(entry)
                continue
            summary = manifest.get("summary")
            if isinstance(summary, dict):
                entry.update(summary)
            created = manifest.get("created")
            if created is None:  # written by a caller that did not record it: the manifest's mtime is when.
                created = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            entry.update(
                version=v, parent_version=manifest.get("parent_version"), created=created, current=v == current
            )
            out.append(entry)
        return out

    def _verified_manifest(self, version: str, *, via_current: bool, hashes: bool | Container[str] = True) -> dict[str, Any]:
        d = self.version_dir(version)
        self._check_not_symlink(self.root / CURRENT)
        self._check_not_symlink(self.versions_root)
        self._check_not_symlink(d)
        if not d.is_dir():
            if via_current:
                raise BundleMissingFileError(f"{self.root / CURRENT} names version {version}, but {d} is missing")
            raise BundleMissingFileError(
                f"version {version} is not kept in {self.root} ({d} is missing); kept versions: {self.versions()}"
            )
        if not via_current and version not in self.versions():
            raise BundleError(f"{d} was never committed (left by an interrupted update, or being committed now)")
        # strict: a version holds only files its manifest lists (the store refuses others at commit)
        manifest = read_manifest(d, kind=KIND, strict=True, hashes=hashes)
        if manifest.get("version") != version:
            raise BundleIntegrityError(
                f"{d / MANIFEST} says version {manifest.get('version')!r}, but it is stored as {version}"
            )
        return manifest

    # ------------------------------------------------------------------ locking

    def lock(self) -> Any:
        """Hold the exclusive writer lock on ``ROOT/.lock`` (a context manager; re-entrant within one thread).

        Waits up to ``lock_timeout_s``, then raises BundleLockedError naming
        the holder's pid (see :class:`abd_edge.bundle_pointers.WriterLock`).
        """
        return self._lock.hold()

    # ------------------------------------------------------------------ writing

    @contextmanager
    def new_version(self) -> Iterator[StagedVersion]:
        """Stage, verify and commit a new version; on an exception nothing visible changes.

        Under the lock: clean up what crashed writers left, stage a directory,
        yield it; after a clean exit, check the manifest (written last by the
        caller) and that it lists every file, make everything durable, rename
        the directory into place, switch CURRENT, and prune old versions.
        """
        with self.lock():
            self._collect_garbage()
            parent = self.current_version()
            if parent is not None and not self.version_dir(parent).is_dir():
                raise BundleMissingFileError(
                    f"{self.root / CURRENT} names version {parent}, but {self.version_dir(parent)} is missing; "
                    f"repair with rollback(to=...) to one of {self.versions()} first"
                )
            numbers = [parse_version_name(v) or 0 for v in self._version_dirs()]
            if parent is not None:
                numbers.append(parse_version_name(parent) or 0)
            version = format_version_name(max(numbers, default=0) + 1)
            self.versions_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.versions_root))
            staged = StagedVersion(path=staging, version=version, parent_version=parent)
            try:
                yield staged
                self._commit(staged)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    def rollback(self, to: str | None = None) -> str:
        """Make ``to`` (default: the current version's parent) current again; returns it.

        See :meth:`switch`, which also returns the verified manifest.
        """
        return self.switch(to)[0]

    def switch(self, to: str | None = None, *, hashes: bool | Container[str] = True) -> tuple[str, dict[str, Any]]:
        """Make ``to`` (default: the current version's parent) current again; ``(version, manifest)``.

        The target must be kept and verify (every file present with its size, the
        sha256 of the files ``hashes`` selects: all by default). The version rolled back
        from is kept (until pruned), so rolling forward is another rollback.
        Works even when CURRENT is garbled or names a missing version, as long
        as ``to`` is given: that is how a damaged store is repaired.
        """
        with self.lock():
            self._collect_garbage()
            if to is None:
                current = self.current_version()
                if current is None:
                    raise BundleMissingFileError(f"{self.root / CURRENT} is missing: there is nothing to roll back from")
                path = self.version_dir(current) / MANIFEST
                try:
                    manifest = read_json(path)
                except BundleError as e:
                    raise type(e)(f"cannot find the parent of {current}: {e}; pass rollback(to=...) "
                                  f"with one of {self.versions()}") from e
                parent = manifest.get("parent_version") if isinstance(manifest, dict) else None
                if parent is None:
                    raise BundleError(f"{current} ({path}) has no parent version: there is nothing to roll back to")
                to = parent
            self.version_dir(to)  # validates the name before touching anything
            if to not in self.versions():
                raise BundleMissingFileError(
                    f"cannot roll back {self.root} to {to}: {self.version_dir(to)} is not kept "
                    f"(keep_versions={self.keep_versions}); kept versions: {self.versions()}"
                )
            manifest = self._verified_manifest(to, via_current=False, hashes=hashes)
            if read_pointer_lenient(self.root / CURRENT) != to:
                write_pointer(self.root / CURRENT, to)
            return to, manifest

    def _version_dirs(self) -> list[str]:
        """Every committed-looking version directory, pending ones included."""
        root = self.versions_root
        if not root.is_dir():
            return []
        return [e.name for e in os.scandir(root) if parse_version_name(e.name) is not None and e.is_dir(follow_symlinks=False)]

    def _commit(self, staged: StagedVersion) -> None:
        path = staged.path
        # The caller hashed these files while writing the manifest a moment ago: check structure and sizes.
        manifest = read_manifest(path, kind=KIND, hashes=False)
        if manifest.get("version") != staged.version:
            raise BundleError(
                f"{path / MANIFEST} says version {manifest.get('version')!r}, expected {staged.version!r} "
                "(pass version=staged.version to write_manifest)"
            )
        if manifest.get("parent_version") != staged.parent_version:
            raise BundleError(
                f"{path / MANIFEST} says parent_version {manifest.get('parent_version')!r}, "
                f"expected {staged.parent_version!r} (pass parent_version=staged.parent_version to write_manifest)"
            )
        listed = {PurePosixPath(name).as_posix() for name in manifest["files"]} | RESERVED_NAMES
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path).as_posix()
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                raise BundleError(f"{p} is not a regular file or directory; a bundle version holds only plain files")
            if p.is_file() and rel not in listed:
                raise BundleError(f"{p} is not listed in {path / MANIFEST}; a version may hold only files its manifest lists")
        final = self.version_dir(staged.version)

        def record_pending() -> None:
            write_pointer(self.root / PENDING, staged.version)
            fault_point("staged")

        commit(path, final, replace=False, before_rename=record_pending)  # 0755/0644, fsynced, renamed
        fault_point("renamed")
        write_pointer(self.root / CURRENT, staged.version)
        remove_pointer(self.root / PENDING)
        fault_point("switched")
        self._prune()

    def _collect_garbage(self) -> None:
        """Remove what an interrupted writer left. Called under the lock only."""
        root = self.versions_root
        if root.is_dir():
            for e in list(os.scandir(root)):
                if e.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                    shutil.rmtree(e.path, ignore_errors=True)
        for name in (pointer_tmp_name(self.root / CURRENT), pointer_tmp_name(self.root / PENDING)):
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
        pending_path = self.root / PENDING
        if not pending_path.exists():
            return
        try:
            current = self.current_version()
        except BundleError:
            return  # cannot tell whether PENDING was made current: keep everything
        pending = read_pointer_lenient(pending_path)
        if pending is not None and pending != current and (root / pending).is_dir():
            # Renamed into place but CURRENT never switched to it: never committed.
            self._delete_version(pending)
        remove_pointer(pending_path)

    def _prune(self) -> None:
        """Delete the oldest versions beyond keep_versions, never the current one.

        The commit has already happened, so a failure here is only a warning;
        anything half-deleted sits under a .trash- name and is collected later.
        """
        current = self.current_version()
        kept = self.versions()
        excess = len(kept) - self.keep_versions
        for v in kept:
            if excess <= 0:
                break
            if v == current:
                continue
            try:
                self._delete_version(v)
            except OSError as e:
                warnings.warn(f"could not prune old bundle version {self.versions_root / v}: {e}", stacklevel=3)
            excess -= 1

    def _delete_version(self, version: str) -> None:
        # Rename first (atomic) so a crash mid-delete never leaves a half version under a version name.
        trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{version}-", dir=self.versions_root))
        os.replace(self.versions_root / version, trash / version)
        fsync_path(self.versions_root)
        shutil.rmtree(trash, ignore_errors=True)


