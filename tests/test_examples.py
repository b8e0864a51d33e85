"""The example programs run as a user would run them."""

import subprocess
import sys

import pytest

from conftest import REPO


def test_device_simulation_example_is_the_cli():
    res = subprocess.run([sys.executable, str(REPO / "examples" / "device_simulation.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--compare-engine" in res.stdout and "--steps" in res.stdout


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr
    assert "device accuracy on 0-9" in res.stdout and "after rollback: v000001" in res.stdout
    assert (tmp_path / "quickstart-bundle" / "CURRENT").read_text().strip() == "v000001"
