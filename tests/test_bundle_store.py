"""Tests of the versioned bundle store: commits, pruning, rollback, tampering, crashes, locking.

Crashes are real: a child process is SIGKILLed at each commit step through
the ``ABD_EDGE_FAULT_POINT`` hook, because exceptions would let cleanup code
run and so would not show that the on-disk state is consistent at every instant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abd_edge.bundle_format import write_manifest
from abd_edge.bundle_store import BundleStore, StagedVersion
from abd_edge.errors import (
    BundleError,
    BundleIntegrityError,
    BundleLockedError,
    BundleMissingFileError,
    BundleVersionError,
)

REPO = Path(__file__).resolve().parents[1]
FILES = ["model.bin", "learner/state.json"]


def commit(store: BundleStore, tag: str, **summary: object) -> str:
    """Commit a small version whose contents depend on ``tag`` (one file sits in a subdirectory)."""
    with store.new_version() as staged:
        assert isinstance(staged, StagedVersion)
        (staged.path / "model.bin").write_bytes(f"weights of {tag}".encode() * 10)
        (staged.path / "learner").mkdir()
        (staged.path / "learner" / "state.json").write_text(json.dumps({"tag": tag}))
        write_manifest(
            staged.path,
            "bundle",
            FILES,
            version=staged.version,
            parent_version=staged.parent_version,
            created="2024-01-01T00:00:00+00:00",
            summary={"tag": tag, **summary},
        )
    return staged.version


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for directories), to show a failed call changed nothing."""
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))
    }


def leftovers(root: Path) -> list[str]:
    """Names that only exist while (or after a crash while) a writer is at work."""
    names = [p.name for p in (root / "versions").iterdir() if p.name.startswith(".")]
    return names + [n for n in ("PENDING", "CURRENT.tmp") if (root / n).exists()]


def run_child(script: str, *args: str, env_extra: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env, **kw)


# ---------------------------------------------------------------- commits, pruning, rollback


def test_commit_history_prune_and_rollback(tmp_path):
    root = tmp_path / "bundle"
    store = BundleStore(root, keep_versions=2)
    assert not store.exists() and store.current_version() is None
    assert store.versions() == [] and store.history() == []
    with pytest.raises(BundleMissingFileError, match="CURRENT"):
        store.read()

    v1 = commit(store, "one", tasks=1)
    v2 = commit(store, "two", tasks=2)
    assert (v1, v2) == ("v000001", "v000002")
    assert (root / "CURRENT").read_text() == "v000002\n"
    assert store.exists() and store.current_version() == v2
    assert store.versions() == [v1, v2]
    assert leftovers(root) == []
    version, manifest = store.read()
    assert version == v2 and manifest["parent_version"] == v1 and manifest["kind"] == "bundle"
    assert set(manifest["files"]) == set(FILES)
    assert json.loads((store.version_dir(v2) / "learner" / "state.json").read_text()) == {"tag": "two"}
    assert store.read(v1)[1]["parent_version"] is None
    history = store.history()
    assert [(h["version"], h["parent_version"], h["current"], h["tasks"], h["tag"]) for h in history] == [
        (v1, None, False, 1, "one"),
        (v2, v1, True, 2, "two"),
    ]
    assert history[0]["created"] == "2024-01-01T00:00:00+00:00"

    # keep_versions=2: the oldest goes, the new current stays.
    v3 = commit(store, "three")
    assert store.versions() == [v2, v3] and not store.version_dir(v1).exists()

    # Roll back to the parent, forward again with an explicit target (under a re-entrant lock), and back.
    assert store.rollback() == v2
    assert store.current_version() == v2 and store.read()[0] == v2
    assert store.versions() == [v2, v3]  # the version rolled back from is kept
    assert [h["current"] for h in store.history()] == [True, False]
    with store.lock():
        assert store.rollback(to=v3) == v3
    assert store.rollback() == v2

    # v2's parent was pruned: refuse, naming it, and change nothing.
    before = snapshot(root)
    with pytest.raises(BundleMissingFileError, match="v000001"):
        store.rollback()
    with pytest.raises(BundleError, match="not a bundle version name"):
        store.rollback(to="../../etc")
    assert snapshot(root) == before

    # Numbering continues after the highest existing version; the parent is the current one.
    v4 = commit(store, "four")
    assert v4 == "v000004"
    assert store.read()[1]["parent_version"] == v2
    assert store.versions() == [v3, v4]  # oldest non-current pruned (v2)
    assert leftovers(root) == []


def test_keep_one_and_no_parent_and_manifest_helper(tmp_path):
    store = BundleStore(tmp_path / "b", keep_versions=1)
    with store.new_version() as staged:
        (staged.path / "sub").mkdir()
        (staged.path / "sub" / "a.txt").write_text("a")
        (staged.path / "b.txt").write_text("b")
        staged.write_manifest(summary={"note": "helper"})
    _, manifest = store.read()
    assert set(manifest["files"]) == {"sub/a.txt", "b.txt"} and manifest["created"]
    with pytest.raises(BundleError, match="no parent"):
        store.rollback()
    commit(store, "x")
    assert store.versions() == ["v000002"]  # only the current one is kept
    assert store.history()[0]["current"] is True


def test_pruning_never_removes_the_current_version(tmp_path):
    # Commits always prune with the newest version current; after a rollback the current
    # one can be the oldest, so check the pruning rule itself there.
    root = tmp_path / "b"
    for tag in ("one", "two", "three"):
        commit(BundleStore(root), tag)
    BundleStore(root).rollback(to="v000001")
    store = BundleStore(root, keep_versions=1)
    with store.lock():
        store._prune()
    assert store.versions() == ["v000001"] and store.read()[0] == "v000001"


def test_exception_or_bad_manifest_inside_new_version_changes_nothing(tmp_path):
    root = tmp_path / "b"
    store = BundleStore(root)
    commit(store, "one")
    before = snapshot(root)

    with pytest.raises(RuntimeError, match="boom"):
        with store.new_version() as staged:
            (staged.path / "model.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not staged.path.exists()
    assert snapshot(root) == before

    # A manifest that claims another version, or that misses a file, is refused before the rename.
    with pytest.raises(BundleError, match="v000007"):
        with store.new_version() as staged:
            (staged.path / "model.bin").write_bytes(b"x")
            write_manifest(staged.path, "bundle", ["model.bin"], version="v000007", parent_version=staged.parent_version)
    with pytest.raises(BundleError, match="extra.bin"):
        with store.new_version() as staged:
            (staged.path / "model.bin").write_bytes(b"x")
            (staged.path / "extra.bin").write_bytes(b"y")
            write_manifest(staged.path, "bundle", ["model.bin"], version=staged.version, parent_version=staged.parent_version)
    assert snapshot(root) == before
    assert store.read()[0] == "v000001"


# ---------------------------------------------------------------- tampering


def _edit_byte(root: Path) -> None:
    p = root / "versions/v000001/learner/state.json"
    data = bytearray(p.read_bytes())
    data[2] ^= 0x01
    p.write_bytes(bytes(data))


def _truncate(root: Path) -> None:
    p = root / "versions/v000001/model.bin"
    p.write_bytes(p.read_bytes()[:-3])


def _set_format_version(root: Path) -> None:
    p = root / "versions/v000001/manifest.json"
    m = json.loads(p.read_text())
    m["format_version"] = 99
    p.write_text(json.dumps(m))


TAMPERING = {
    "edited byte": (_edit_byte, BundleIntegrityError, "state.json"),
    "truncated": (_truncate, BundleIntegrityError, "model.bin"),
    "deleted": (lambda r: (r / "versions/v000001/model.bin").unlink(), BundleMissingFileError, "model.bin"),
    "CURRENT names a missing version": (
        lambda r: (r / "CURRENT").write_text("v000009\n"), BundleMissingFileError, "v000009"),
    "garbage in CURRENT": (lambda r: (r / "CURRENT").write_bytes(b"\x00\xffnot a version"), BundleError, "CURRENT"),
    "format_version 99": (_set_format_version, BundleVersionError, "99"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_detected_and_reading_changes_nothing(tmp_path, case):
    root = tmp_path / "b"
    store = BundleStore(root)
    commit(store, "one")
    tamper, error, name = TAMPERING[case]
    tamper(root)
    before = snapshot(root)
    with pytest.raises(error, match=name):
        store.read()
    assert snapshot(root) == before


# ---------------------------------------------------------------- crashes


CRASHING_COMMIT = """
import sys
from abd_edge.bundle_format import write_manifest
from abd_edge.bundle_store import BundleStore
store = BundleStore(sys.argv[1])
with store.new_version() as s:
    (s.path / "model.bin").write_bytes(b"crashing commit" * 100)
    (s.path / "learner").mkdir()
    (s.path / "learner" / "state.json").write_text("{}")
    write_manifest(s.path, "bundle", ["model.bin", "learner/state.json"],
                   version=s.version, parent_version=s.parent_version)
print("survived")
"""


@pytest.mark.parametrize("point, expected", [("staged", "v000001"), ("renamed", "v000001"), ("switched", "v000002")])
def test_sigkill_during_commit_leaves_a_complete_version(tmp_path, point, expected):
    root = tmp_path / "b"
    commit(BundleStore(root), "one")
    child = run_child(CRASHING_COMMIT, str(root), env_extra={"ABD_EDGE_FAULT_POINT": point},
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, (child.returncode, err.decode())
    assert b"survived" not in out

    store = BundleStore(root)
    version, manifest = store.read()  # fully verified
    assert version == expected
    assert store.versions() == ["v000001", "v000002"][: int(expected[-1])]
    if point != "switched":
        assert json.loads((store.version_dir("v000001") / "learner/state.json").read_text()) == {"tag": "one"}

    # The next writer cleans up and commits without colliding with what the crash left.
    new = commit(store, "after crash")
    assert new == f"v{int(expected[-1]) + 1:06d}"
    assert store.read() == (new, store.read(new)[1])
    assert store.read()[1]["parent_version"] == expected
    assert json.loads((store.version_dir(new) / "learner/state.json").read_text()) == {"tag": "after crash"}
    assert leftovers(root) == []


# ---------------------------------------------------------------- locking


HOLD_LOCK = """
import sys, time
from pathlib import Path
from abd_edge.bundle_store import BundleStore
with BundleStore(sys.argv[1]).lock():
    Path(sys.argv[2]).write_text("ready")
    time.sleep(float(sys.argv[3]))
"""


def test_lock_refuses_then_waits(tmp_path):
    root = tmp_path / "b"
    commit(BundleStore(root), "one")
    ready = tmp_path / "ready"
    holder = run_child(HOLD_LOCK, str(root), str(ready), "1.2")
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "lock holder did not start"
            time.sleep(0.02)
        seen_ready = time.monotonic()  # the holder's 1.2 s sleep began at most one poll before this
        before = snapshot(root)

        t0 = time.monotonic()
        with pytest.raises(BundleLockedError, match=f"pid {holder.pid}"):
            with BundleStore(root, lock_timeout_s=0.2).new_version():
                pytest.fail("entered new_version while another process held the lock")
        waited = time.monotonic() - t0
        assert 0.15 <= waited < 1.0, waited
        assert snapshot(root) == before

        assert holder.poll() is None  # still holding: the next call has to wait for it
        assert commit(BundleStore(root, lock_timeout_s=20), "two") == "v000002"
        assert time.monotonic() - seen_ready > 1.1  # it went through only once the holder let go
        assert holder.wait(timeout=20) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert BundleStore(root).read()[0] == "v000002"


# ---------------------------------------------------------------- torch-free import


def test_imports_without_torch_or_numpy():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None\n"
        "import abd_edge.bundle_store\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    proc = run_child(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
