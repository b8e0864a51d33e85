"""The abd-edge command line, run as a user would (tiny budgets on the embedded digits)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abd_edge.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_bench_digits_writes_json_and_png(tmp_path):
    out = tmp_path / "r.json"
    res = cli("bench", "--dataset", "digits", "--tasks", "2", "--method", "abd", "--epochs", "3", "--dream-iters", "2",
              "--quiet", "--out", str(out), "--save-learner", str(tmp_path / "learner"))
    assert res.returncode == 0, res.stderr
    assert "final %" in res.stdout and "accuracy matrix" in res.stdout
    doc = json.loads(out.read_text())
    r = doc["methods"]["abd"]
    assert doc["class_order"] == [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]  # random.Random(0).shuffle(list(range(10)))
    assert len(r["accuracy"]["per_task"]) == 2 and 0 <= r["final_accuracy"] <= 1
    assert r["task1_images_per_second"] > 0 and r["peak_memory_mb"] > 0 and r["dream_seconds_per_iteration"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000
    # the saved learner exports as a bundle through the CLI
    res = cli("export", str(tmp_path / "learner"), str(tmp_path / "bundle"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"] == "v000001"
    res = cli("info", str(tmp_path / "bundle" / "versions" / "v000001"))
    assert res.returncode == 0 and '"kind": "bundle"' in res.stdout


def test_bench_report_merges(tmp_path):
    for m in ("finetune", "lwf"):
        res = cli("bench", "--dataset", "digits", "--tasks", "2", "--method", m, "--epochs", "1", "--quiet", "--no-plot",
                  "--out", str(tmp_path / f"{m}.json"))
        assert res.returncode == 0, res.stderr
    res = cli("bench-report", str(tmp_path / "finetune.json"), str(tmp_path / "lwf.json"), "--out", str(tmp_path / "all.json"))
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "all.json").read_text())
    assert sorted(doc["methods"]) == ["finetune", "lwf"]


def test_bench_set_and_max_tasks(tmp_path):
    out = tmp_path / "r.json"
    res = cli("bench", "--dataset", "digits", "--tasks", "5", "--max-tasks", "2", "--method", "finetune", "--epochs", "1",
              "--set", "later_tasks.lr=0.05", "--set", "seed=4", "--quiet", "--no-plot", "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    r = doc["methods"]["finetune"]
    assert len(r["accuracy"]["per_task"]) == 2  # stopped after 2 of the 5 tasks
    assert r["config"]["later_tasks"]["lr"] == 0.05 and r["config"]["seed"] == 4
    assert doc["benchmark"]["overrides"] == {"later_tasks.lr": "0.05", "seed": "4"}
    assert doc["class_order"] == [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]  # --seed, not the learner's seed, orders the classes
    for bad, word in ((["--set", "later_tasks.lrr=1"], "lrr"), (["--set", "nonsense"], "KEY=VALUE"),
                      (["--max-tasks", "6"], "--max-tasks")):
        res = cli("bench", "--dataset", "digits", "--tasks", "5", "--method", "finetune", *bad, "--out", str(tmp_path / "x.json"))
        assert res.returncode == 2 and "ConfigError" in res.stderr and word in res.stderr, res.stderr
        assert not (tmp_path / "x.json").exists()


def test_simulate_tiny(tmp_path):
    res = cli("simulate", "--tasks", "5", "--steps", "1", "--epochs", "1", "--dream-iterations", "2", "--server-epochs", "1",
              "--server-dream-iters", "2", "--compare-engine", "--quiet", "--out", str(tmp_path / "sim"))
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert [r["step"] for r in doc["rows"]] == [0, 1]
    last = doc["rows"][-1]
    # the device's update through the runtime equals the same update in the engine
    assert abs(last["acc_abd"] - last["acc_engine"]) <= 0.01
    assert last["bundle_mb"] > 0 and last["update_seconds"] > 0
    assert (tmp_path / "sim" / "simulation.png").stat().st_size > 1000


def test_cli_reports_errors_cleanly(tmp_path):
    res = cli("bench", "--dataset", "cifar10", "--data-root", str(tmp_path / "nope"))
    assert res.returncode == 2 and "DatasetError" in res.stderr and "nope" in res.stderr
