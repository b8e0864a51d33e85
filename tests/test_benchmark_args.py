"""Argument handling of the benchmark programs (measurement tools, not part of the SDK)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    """A program of benchmarks/ imported as a module (they are scripts, not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.fixture()
def privacy_sweep():
    return _benchmark("privacy_sweep")


def test_sweep_settings_inline_json_longer_than_a_file_name(privacy_sweep, tmp_path):
    """Bug: a long inline JSON was first tried as a path, and Path.is_file raised OSError 'File name too long'."""
    many = {f"setting_{i}": {"target_epsilon": 8, "mean_init_fraction": 0.5, "trainable": "new_head"} for i in range(12)}
    text = json.dumps(many)
    assert len(text) > 255  # longer than any file name
    assert privacy_sweep.read_settings(text) == many
    path = tmp_path / "s.json"
    path.write_text(text)
    assert privacy_sweep.read_settings(str(path)) == many
    with pytest.raises(SystemExit, match="name -> PrivacyConfig fields"):
        privacy_sweep.read_settings('{"a": 1}')


@pytest.fixture()
def generalisation():
    return _benchmark("generalisation")


def test_generalisation_set_changes_the_recipe_and_is_recorded(generalisation, tmp_path):
    """--set reaches the learner's config, is written into the settings, and keeps runs of other settings apart."""
    out = tmp_path / "g.json"
    args = ["--protocols", "digits-32rgb", "--methods", "finetune", "--orders", "0", "--train-per-class", "8",
            "--test-per-class", "4", "--epochs", "1", "--dream-iters", "1", "--out", str(out)]
    sets = ["--set", "dream.balance_units=bits", "--set", "later_tasks.lr=0.05", "--set", "seed=7"]
    assert generalisation.main([*args, *sets]) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["overrides"] == {"dream.balance_units": "bits", "later_tasks.lr": "0.05", "seed": "7"}
    cfg = doc["results"]["digits-32rgb/order0"]["finetune"]["settled_config"]
    assert cfg["dream"]["balance_units"] == "bits" and cfg["later_tasks"]["lr"] == 0.05
    assert cfg["seed"] == 7  # recorded and used: the order's seed (0) does not silently replace it
    with pytest.raises(SystemExit, match="other settings"):  # resuming that file without the overrides is refused
        generalisation.main(args)
