"""The privacy flags and the audit subcommand, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import REPO, make_task


def cli(*args: str) -> subprocess.CompletedProcess:
    env_args = [sys.executable, "-m", "abd_edge", *args]
    return subprocess.run(env_args, capture_output=True, text=True, cwd=REPO, timeout=600)


def _npz(path, labels, n, seed):
    x, y = make_task(labels, n_per_class=n, seed=seed)
    np.savez(path, images=x.numpy(), labels=np.array(y))
    return path


def test_learn_with_epsilon_then_audit(tmp_path):
    base = _npz(tmp_path / "base.npz", [0, 1], 12, 1)
    x, y = make_task([2, 3], n_per_class=40, seed=2)
    np.savez(tmp_path / "mem.npz", images=x[::2].numpy(), labels=np.array(y[::2]))
    np.savez(tmp_path / "non.npz", images=x[1::2].numpy(), labels=np.array(y[1::2]))
    learner = str(tmp_path / "learner")
    common = ["--learner", learner, "--epochs", "1", "--dream-iters", "2", "--quiet"]
    assert cli("learn", str(base), *common).returncode == 0
    bad = cli("learn", str(tmp_path / "mem.npz"), *common, "--epsilon", "8", "--delta", "0.5")
    assert bad.returncode == 2 and "PrivacyError" in bad.stderr and "1/N" in bad.stderr, bad.stderr
    res = cli("learn", str(tmp_path / "mem.npz"), *common, "--epsilon", "8", "--delta", "1e-3", "--accountant", "rdp")
    assert res.returncode == 0, res.stderr
    state = json.loads((tmp_path / "learner" / "state.json").read_text())
    assert [h["privacy"]["private"] for h in state["history"]] == [False, True]
    assert 0 < state["history"][1]["privacy"]["epsilon"] <= 8.05
    out = tmp_path / "audit"
    res = cli("audit", learner, "--members", str(tmp_path / "mem.npz"), "--non-members", str(tmp_path / "non.npz"),
              "--shadows", "0", "--dreams", "16", "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "audit.json").read_text())
    assert doc["membership"]["attacks"][0]["attack"] == "loss_threshold"
    assert doc["persistence_scan"]["files_with_member_bytes"] == []
    assert (out / "closest_dreams.png").is_file()
