"""Argument handling of the benchmark programs (measurement tools, not part of the SDK)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def privacy_sweep():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import privacy_sweep
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return privacy_sweep


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
