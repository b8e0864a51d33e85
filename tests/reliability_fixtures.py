"""A bundle shared by the reliability test modules, built once per test session (ONNX export is slow)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from abd_edge import Learner
from abd_edge.export import export_bundle
from conftest import make_task, tiny_config


@functools.lru_cache(maxsize=1)
def two_version_bundle() -> Path:
    """v000001 knows classes 0, 1; v000002 (current) knows 0, 1, 5, 6. Copy it before changing anything.

    Fine-tuning trains no generator, which halves the exports; later tasks use lr 0.01.
    """
    root = Path(tempfile.mkdtemp(prefix="abd-rel-"))
    atexit.register(shutil.rmtree, root, True)
    learner = Learner(tiny_config("finetune"))
    learner.learn_new_classes(make_task([0, 1], n_per_class=24), class_names={0: "zero", 1: "one"}, show_progress=False)
    export_bundle(learner, root / "bundle")
    learner.learn_new_classes(make_task([5, 6], n_per_class=24, seed=3), class_names={5: "five", 6: "six"},
                              show_progress=False)
    export_bundle(learner, root / "bundle")
    return root / "bundle"
