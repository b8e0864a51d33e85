"""SIGKILL at random moments inside saves, exports and device updates (issue 8): every kill leaves a valid state.

A child process repeats the operation in a loop and is killed after a random
delay, so the kills land at arbitrary points (inside safetensors writes,
ONNX export, fsyncs, renames), not only at the named fault points that
tests/test_runtime.py covers. After each kill the learner must load, or the
bundle must open at a valid version with the expected classes, and a file
the user keeps beside the learner must be intact. 20 kills per operation,
60 in all: slow (several minutes).
"""

from __future__ import annotations

import importlib.util
import random
import shutil

import pytest

from abd_edge import Learner
from conftest import REPO, make_task, tiny_config
from reliability_fixtures import two_version_bundle

pytestmark = pytest.mark.slow
KILLS = 20


def adversarial():
    spec = importlib.util.spec_from_file_location("adversarial", REPO / "benchmarks" / "adversarial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    a = Learner(tiny_config("finetune"))
    a.learn_new_classes(make_task([0, 1], n_per_class=24), show_progress=False)
    a.save(src / "a")
    a.learn_new_classes(make_task([5, 6], n_per_class=24, seed=3), show_progress=False)
    a.save(src / "b")
    return src, [{0, 1}, {0, 1, 5, 6}]


def test_random_sigkills_during_saves(sources, tmp_path):
    adv = adversarial()
    src, expected = sources
    target = tmp_path / "keep" / "learner"
    shutil.copytree(src / "a", target)
    (target.parent / "my_notes.txt").write_text("mine")
    res = adv.sigkill_loop("save", KILLS, target, src, expected, 1.5, random.Random(1))
    assert res["survived"] == KILLS, res
    assert (target.parent / "my_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in target.parent.iterdir()) == ["learner", "my_notes.txt"]  # no staging left


def test_random_sigkills_during_exports(sources, tmp_path):
    adv = adversarial()
    src, expected = sources
    target = tmp_path / "bundle"
    shutil.copytree(two_version_bundle(), target)
    res = adv.sigkill_loop("export", KILLS, target, src, expected, 12.0, random.Random(2))
    assert res["survived"] == KILLS, res


def test_random_sigkills_during_updates(sources, tmp_path):
    adv = adversarial()
    src, expected = sources
    target = tmp_path / "bundle"
    shutil.copytree(two_version_bundle(), target)
    res = adv.sigkill_loop("update", KILLS, target, src, expected + [{0, 1, 5, 6, 20, 21}], 20.0, random.Random(3))
    assert res["survived"] == KILLS, res
