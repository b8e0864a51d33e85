"""Issue 8, data loss: a save never deletes or hides what it did not write; the lock never truncates a foreign file.

Each test here failed on the code before the fix (defects 1, 2 and 8 of
issue 8), plus the modes of committed files (issue 7).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from abd_edge import Learner
from abd_edge.bundle_format import staging_dir, write_manifest
from abd_edge.bundle_store import BundleStore
from abd_edge.errors import AbdEdgeError, BundleError, BundleIntegrityError
from conftest import make_task, tiny_config


@pytest.fixture(scope="module")
def trained():
    learner = Learner(tiny_config("finetune"))
    learner.learn_new_classes(make_task([0, 1], n_per_class=6), show_progress=False)
    return learner


def tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------ defect 1


def test_save_refuses_a_non_empty_directory_that_is_not_a_learner(trained, tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "my_notes.txt").write_text("do not lose me")
    (d / "sub" / "photo.jpg").write_bytes(b"\xff\xd8 jpeg bytes")
    before = tree(tmp_path)
    with pytest.raises(BundleError, match=r"not empty and does not hold a saved learner.*my_notes.txt"):
        trained.save(d)
    assert tree(tmp_path) == before  # nothing deleted, renamed or left behind


def test_save_refuses_a_regular_file(trained, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("precious")
    for _ in range(2):  # the second call used to raise a raw NotADirectoryError
        with pytest.raises(BundleError, match="is not a directory"):
            trained.save(f)
    assert f.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_save_refuses_a_symlink_target(trained, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(BundleError, match="symlink"):
        trained.save(link)
    assert link.is_symlink() and list(real.iterdir()) == []


def test_save_over_a_learner_replaces_exactly_its_files(trained, tmp_path):
    d = tmp_path / "l"
    trained.save(d)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["manifest.json", "manifest.sha256", "state.json", "weights.safetensors"]
    other = Learner(tiny_config("finetune", seed=3))
    other.learn_new_classes(make_task([4, 5, 6], n_per_class=4), show_progress=False)
    other.save(d)  # over an existing learner: allowed
    assert sorted(p.name for p in d.iterdir()) == names
    assert Learner.load(d).registry.labels == [4, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l"]  # no .l.old, no staging left
    # A learner directory that also holds someone else's file is not replaced (its file would go).
    (d / "readme.txt").write_text("mine")
    before = tree(d)
    with pytest.raises(BundleError, match=r"files it did not write.*readme.txt"):
        trained.save(d)
    assert tree(d) == before


def test_save_into_an_empty_directory(trained, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    trained.save(d)
    assert Learner.load(d).registry.labels == [0, 1]


def test_saved_modes_are_0755_and_0644(trained, tmp_path):
    d = tmp_path / "l"
    trained.save(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755  # mkdtemp made it 0700 before
    assert {stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()} == {0o644}


# ------------------------------------------------------------------ defect 8


def test_staging_leftovers_are_cleaned_on_next_save_and_load(trained, tmp_path):
    d = tmp_path / "l"
    trained.save(d)

    def leftover(name: str, extra: str | None = None) -> Path:
        p = tmp_path / name
        p.mkdir()
        (p / "weights.safetensors").write_bytes(b"0" * 100)
        (p / "state.json").write_text("{}")
        if extra:
            (p / extra).write_text("not ours")
        return p

    a = leftover(".l.tmp-killed1")
    (a / ".tmpAb12Cd").write_bytes(b"half of a safetensors file")  # killed inside safetensors' own temp-and-rename
    foreign = leftover(".l.tmp-killed2", extra="holiday.jpg")
    trained.save(d)
    assert not a.exists()
    assert (foreign / "holiday.jpg").read_text() == "not ours"  # holds a file a save never writes: kept
    b = leftover(".l.tmp-killed3")
    Learner.load(d)
    assert not b.exists()


def test_a_staging_directory_in_use_is_not_cleaned(trained, tmp_path):
    d = tmp_path / "l"
    with staging_dir(d) as live:  # another save writing right now (it holds the flock)
        (live / "weights.safetensors").write_bytes(b"half written")
        trained.save(d)
        assert (live / "weights.safetensors").read_bytes() == b"half written"
    assert not live.exists() or list(live.iterdir())


# ------------------------------------------------------------------ defect 2


def small_store(root: Path) -> BundleStore:
    store = BundleStore(root)
    with store.new_version() as staged:
        (staged.path / "model.bin").write_bytes(b"w" * 10)
        write_manifest(staged.path, "bundle", ["model.bin"], version=staged.version, parent_version=None)
    return store


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_lock_never_truncates_what_dot_lock_points_at(tmp_path, how):
    store = small_store(tmp_path / "b")
    victim = tmp_path / "victim.txt"
    victim.write_text("my thesis " * 100)
    (tmp_path / "b" / ".lock").unlink()
    if how == "symlink":
        (tmp_path / "b" / ".lock").symlink_to(victim)
    else:
        os.link(victim, tmp_path / "b" / ".lock")
    with pytest.raises(BundleIntegrityError, match=r"\.lock"):
        with store.lock():
            pass
    with pytest.raises(AbdEdgeError):
        store.rollback("v000001")
    assert victim.read_text() == "my thesis " * 100


def test_lock_file_is_refused_when_it_holds_more_than_a_pid(tmp_path):
    store = small_store(tmp_path / "b")
    (tmp_path / "b" / ".lock").write_text(json.dumps({"not": "a pid"}) * 10)
    with pytest.raises(BundleIntegrityError, match="not a lock file"):
        with store.lock():
            pass
    assert (tmp_path / "b" / ".lock").read_text().startswith('{"not"')


def test_committed_version_modes(tmp_path):
    store = small_store(tmp_path / "b")
    vdir = store.version_dir("v000001")
    assert stat.S_IMODE(vdir.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in vdir.iterdir()} == {0o644}
