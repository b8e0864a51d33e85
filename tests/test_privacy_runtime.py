"""A private update through the device runtime: the budget carries the PrivacyConfig, the manifest the ledger."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from abd_edge import Learner, runtime
from abd_edge.privacy.config import PrivacyConfig
from abd_edge.errors import PrivacyError
from abd_edge.export import export_bundle

from conftest import make_task, tiny_config


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("priv-bundle")
    learner = Learner(tiny_config("abd"))
    learner.learn_new_classes(make_task([0, 1], seed=1), show_progress=False)
    export_bundle(learner, root / "b")
    return root / "b"


def nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def test_device_private_update_writes_the_ledger(bundle_dir, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(bundle_dir, path)
    pc = PrivacyConfig(target_epsilon=4.0, delta=1e-3, accountant="rdp", epochs=2, batch_size=16)
    dev = runtime.open(path, budget=runtime.DeviceBudget(epochs=1, dream_iterations=2, privacy=pc))
    x, y = make_task([5, 6], n_per_class=30, seed=3)
    rep = dev.learn_new_classes((nhwc(x), y))
    assert rep.privacy["private"] and rep.privacy["epsilon"] <= 4.05 and rep.train_accuracy is None
    ledger = dev.privacy()
    assert [e["private"] for e in ledger] == [False, True] and ledger[1] == rep.privacy
    assert runtime.open(path).privacy() == ledger  # read back from the manifest


def test_info_prints_the_ledger_summary(bundle_dir, capsys):
    from abd_edge.apps.cli import main

    from abd_edge.bundle_store import BundleStore

    store = BundleStore(bundle_dir)
    assert main(["info", str(store.version_dir(store.current_version()))]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["privacy_summary"]["labels_without_guarantee"] == [0, 1]
    assert info["privacy_summary"]["total_claim"].startswith("none")
    assert info["privacy"]["ledger"][0]["epsilon"] == "inf"  # describe() of a version: the ledger as the manifest has it
    assert info["class_statistics"]["rows"] == [0, 1]  # what of the server's data the bundle's learner carries


def test_device_refuses_a_bad_private_update_and_keeps_its_version(bundle_dir, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(bundle_dir, path)
    dev = runtime.open(path)
    x, y = make_task([5, 6], n_per_class=30, seed=3)
    bad = runtime.DeviceBudget(epochs=1, dream_iterations=2, privacy={"target_epsilon": 4.0, "delta": 0.5})
    with pytest.raises(PrivacyError, match="1/N"):
        dev.learn_new_classes((nhwc(x), y), budget=bad)
    assert runtime.open(path).version == "v000001" and dev.class_names == ["0", "1"]
