"""The abd-edge command line, run as a user would (tiny budgets on the embedded digits)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from abd_edge import __version__
from abd_edge.apps.bench import BenchSpec, dreams_after, learner_config, run_method
from abd_edge.apps.cli import build_parser
from abd_edge.errors import ConfigError
from conftest import REPO, make_task


def cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abd_edge", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


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
    assert res.returncode == 0 and json.loads(res.stdout)["kind"] == "bundle version"


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


def test_partial_bench_does_not_dream_after_its_last_task():
    # Regression: --max-tasks 2 of 5 dreamed after task 2 (5.5 min per cifar10 run) for a task that never came.
    assert [dreams_after(t, 2, 5, saving=False) for t in range(2)] == [True, False]
    assert [dreams_after(t, 2, 5, saving=True) for t in range(2)] == [True, True]  # a saved learner may go on
    assert [dreams_after(t, 5, 5, saving=True) for t in range(5)] == [True] * 4 + [False]
    spec = BenchSpec(dataset="digits", tasks=5, method="abd", epochs=1, dream_iters=2, max_tasks=2)
    reports = run_method(spec, "abd", show_progress=False)["reports"]
    assert [r["dream_iterations"] for r in reports] == [2, 0]


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


# ---------------------------------------------------------------- defects of issue 7, one test each


def test_version_and_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "abd_edge", "--version"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == f"abd-edge {__version__}"


def test_verbose_before_or_after_the_subcommand():
    p = build_parser()
    assert p.parse_args(["-v", "info"]).verbose and p.parse_args(["info", "-v"]).verbose
    assert p.parse_args(["info", "--verbose"]).verbose and not p.parse_args(["info"]).verbose


def test_dream_iterations_spelled_one_way_old_spelling_hidden():
    p = build_parser()
    for cmd in (["bench"], ["learn", "d", "--learner", "l"], ["simulate"]):
        assert p.parse_args([*cmd, "--dream-iterations", "7"]).dream_iterations == 7
        assert p.parse_args([*cmd, "--dream-iters", "7"]).dream_iterations == 7  # hidden alias
    assert p.parse_args(["simulate", "--server-dream-iters", "3"]).server_dream_iterations == 3
    helps = {name: sp.format_help() for name, sp in p._subparsers._group_actions[0].choices.items()}
    assert all("--dream-iters " not in h and "--dream-iters\n" not in h for h in helps.values())
    assert "--dream-iterations" in helps["bench"] and "--server-dream-iterations" in helps["simulate"]
    # help texts show defaults and examples
    assert "(default: 5)" in helps["bench"] and "examples:" in helps["bench"] and "examples:" in helps["info"]


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--tasks", "0"], ["--dream-iterations", "-1"], ["--tasks", "x"]])
def test_bench_rejects_bad_counts(tmp_path, bad):
    """--epochs 0 used to run 12 epochs (recording 0); --tasks 0 ended in ZeroDivisionError."""
    out = tmp_path / "r.json"
    res = cli("bench", "--dataset", "digits", *bad, "--out", str(out))
    assert res.returncode == 2 and bad[0] in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.parametrize("field, value", [("epochs", 0), ("tasks", 0), ("dream_iters", -1), ("epochs", True), ("batch_size", 1)])
def test_bench_spec_refuses_through_the_api_what_the_cli_refuses(field, value):
    """BenchSpec(epochs=0) used to run the dataset's 12 epochs while its JSON recorded 0."""
    with pytest.raises(ConfigError, match=rf"BenchSpec\.{field}={value!r}: expected an int >= "):
        BenchSpec(**{field: value})


def test_bench_spec_epochs_none_means_the_default_and_one_means_one():
    assert learner_config(BenchSpec(dataset="digits"), "abd").later_tasks.epochs == 12  # digits' protocol
    assert learner_config(BenchSpec(dataset="digits", epochs=1), "abd").later_tasks.epochs == 1


def test_bench_report_on_missing_or_bad_file(tmp_path):
    res = cli("bench-report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "all.json"))
    assert res.returncode == 2 and "missing.json does not exist" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "bad.json").write_text("{not json")
    res = cli("bench-report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "all.json"))
    assert res.returncode == 2 and "not valid JSON" in res.stderr
    assert not (tmp_path / "all.json").exists()


def test_diverging_run_is_a_clean_error(tmp_path):
    res = cli("bench", "--dataset", "digits", "--tasks", "5", "--max-tasks", "1", "--method", "finetune", "--epochs", "1",
              "--set", "first_task.lr=1e30", "--quiet", "--no-plot", "--out", str(tmp_path / "r.json"))
    assert res.returncode == 3 and "training diverged" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]


@pytest.fixture(scope="module")
def npz_tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    for name, labels, seed in (("t1", [0, 1], 0), ("t2", [2, 3], 1), ("test", [0, 1, 2, 3], 2)):
        x, y = make_task(labels, n_per_class=10, seed=seed)
        np.savez(d / f"{name}.npz", images=x.numpy(), labels=np.array(y))
    return d


def test_learn_eval_json_and_flags_on_an_existing_learner(npz_tasks, tmp_path):
    learner = tmp_path / "learner"
    res = cli("learn", str(npz_tasks / "t1.npz"), "--learner", str(learner), "--epochs", "1", "--dream-iterations", "1",
              "--eval", str(npz_tasks / "t1.npz"), "--quiet")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # one JSON document, nothing after it
    assert 0 <= doc["eval"]["accuracy"] <= 1 and doc["config"] == {"method": "abd", "epochs": 1, "dream_iterations": 1}
    # --recipe/--seed cannot change an existing learner: a clear error, the learner untouched
    before = (learner / "manifest.json").read_bytes()
    res = cli("learn", str(npz_tasks / "t2.npz"), "--learner", str(learner), "--recipe", "paper")
    assert res.returncode == 2 and "--recipe" in res.stderr and "already holds one" in res.stderr
    assert (learner / "manifest.json").read_bytes() == before
    # --method/--epochs/--dream-iterations apply to the next task (they used to be ignored silently)
    res = cli("learn", str(npz_tasks / "t2.npz"), "--learner", str(learner), "--method", "finetune", "--epochs", "2",
              "--dream-iterations", "0", "--quiet")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["config"] == {"method": "finetune", "epochs": 2, "dream_iterations": 0}
    assert doc["labels_added"] == [2, 3]


def test_info_on_root_version_and_learner_without_torch(npz_tasks, tmp_path):
    learner, bundle = tmp_path / "learner", tmp_path / "bundle"
    assert cli("learn", str(npz_tasks / "t1.npz"), "--learner", str(learner), "--epochs", "1", "--dream-iterations", "1",
               "--quiet").returncode == 0
    assert cli("keygen", str(tmp_path / "key")).returncode == 0
    res = cli("export", str(learner), str(bundle), "--sign-key", str(tmp_path / "key"))
    assert res.returncode == 0 and json.loads(res.stdout)["signed"] is True, res.stderr
    block = "import sys\nsys.modules['torch'] = None\nfrom abd_edge.apps.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    docs = {}
    for name, path in (("root", bundle), ("version", bundle / "versions" / "v000001"), ("learner", learner)):
        res = subprocess.run([sys.executable, "-c", block, "info", str(path)], capture_output=True, text=True, cwd=REPO)
        assert res.returncode == 0, res.stderr
        docs[name] = json.loads(res.stdout)
    root = docs["root"]
    assert root["kind"] == "bundle" and root["current_version"] == "v000001" and len(root["versions"]) == 1
    cur = root["current"]
    assert [c["label"] for c in cur["classes"]] == [0, 1] and cur["sizes"]["total_bytes"] > 0
    assert cur["signature"]["valid"] is True and cur["min_onnxruntime"] == "1.14"
    ledger = cur["privacy"]["ledger"]  # the server's task: recorded, without a DP guarantee
    assert len(ledger) == 1 and ledger[0]["epsilon"] == "inf" and not ledger[0]["private"]
    assert cur["privacy_summary"] is not None
    assert len(cur["history"]) == 1
    assert docs["version"]["version"] == "v000001"
    assert docs["learner"]["kind"] == "learner" and docs["learner"]["tasks_learned"] == 1
    res = cli("info", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "does not exist" in res.stderr


# ---------------------------------------------------------------- bench --profile (issue 11, item 1)


def test_bench_profile_maps_onto_the_profiler_and_refuses_other_datasets(tmp_path):
    from abd_edge.apps.profiling import bench_argv

    argv = bench_argv("c.npz", 2, str(tmp_path / "p.json"), quick=False)
    assert argv[:4] == ["--data", "c.npz", "--threads", "2"] and argv[-2:] == ["--out", str(tmp_path / "p.json")]
    quick = bench_argv(None, None, None, quick=True)
    assert quick[:4] == ["--synthetic", "1024", "--threads", "1"] and "--rounds" in quick and quick[quick.index("--out") + 1].startswith("runs/profile-")
    res = cli("bench", "--profile", "--dataset", "digits")
    assert res.returncode == 2 and "ConfigError" in res.stderr and "--dataset digits" in res.stderr


def test_profile_table_keeps_its_columns_for_long_variant_names():
    # Regression: "engine fp32_contiguous" overran the 18-character label column and shifted its numbers.
    from abd_edge.apps.profiling import format_tables

    row = {"images_per_second": 259.4, "vs_plain": 1.05, "per_round": [258.0, 261.0]}
    doc = {"setup": {"threads": 2, "rounds": 2}, "replay_and_dreaming": {},
           "task1": {"plain": {**row, "vs_plain": 1.0}, "fp32_contiguous": row, "bf16_compile": row}}
    header, *rows = format_tables(doc).splitlines()[1:]
    end = header.index("vs plain") + len("vs plain")  # the column's numbers are right-aligned under its title
    assert [r[end - 4 : end] for r in rows] == ["1.00", "1.05", "1.05"]


def test_profile_measures_both_loops_and_breaks_a_step_down(tmp_path):
    from abd_edge.apps.profiling import DREAM_LABELS, LABELS, main

    out = tmp_path / "profile.json"
    assert main(["--synthetic", "128", "--threads", "1", "--workers", "0", "--seconds", "0.5", "--rounds", "1",
                 "--replay-seconds", "0.5", "--dream-iters", "2", "--variants", "fp32", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    plain, engine = doc["task1"]["plain"], doc["task1"]["fp32"]
    assert plain["images_per_second"] > 0 and engine["images_per_second"] > 0
    assert engine["vs_plain"] == pytest.approx(engine["images_per_second"] / plain["images_per_second"])
    rd = doc["replay_and_dreaming"]["fp32"]
    assert rd["replay_images_per_second"] > 0 and rd["dream_seconds_per_iteration"] > 0
    assert {"abd.forward", "abd.backward"} <= {f"abd.{k}" for k in rd["replay_step"]["ms_per_step"]} <= set(LABELS) | {"abd.other"}
    assert {f"abd.{k}" for k in rd["dream_iteration"]["ms_per_iteration"]} <= set(DREAM_LABELS) | {"abd.other"}
    ceiling = doc["ceiling"]
    assert ceiling["training_mflop_per_image"] == pytest.approx(412.3, rel=1e-3)  # ResNet-32 at 32x32, 10 classes
    assert set(ceiling["loops"]) == {"plain", "fp32"} and ceiling["best_vs_plain"] > 0
    assert ceiling["gemm_gflop_per_second"]["fp32"] > 0 and ceiling["gemm_gflop_per_second"]["bf16"] > 0


def test_training_flops_per_image_counts_forward_and_weight_gradients():
    from abd_edge.apps.profiling import training_flops_per_image

    # Linear(12 -> 5) on a flattened 3x2x2 image: forward 2*12*5 multiply-adds; backward only the weight
    # gradient (the input needs none), another 2*12*5. Bias adds are not matrix products and are not counted.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    assert training_flops_per_image(model, (3, 2, 2), n=3) == 2 * (2 * 12 * 5)
    assert all(p.grad is None for p in model.parameters())


def test_compute_ceiling_relates_loops_to_gemm(monkeypatch):
    from abd_edge.apps import profiling

    monkeypatch.setattr(profiling, "training_flops_per_image", lambda model: 400e6)
    monkeypatch.setattr(profiling, "dense_gemm_flops_per_second",
                        lambda dtype, device, seconds=1.0: 100e9 if dtype == torch.float32 else 300e9)
    task1 = {"plain": {"images_per_second": 100.0}, "bf16": {"images_per_second": 500.0}}
    c = profiling.compute_ceiling(task1, torch.device("cpu"))
    assert c["loops"]["plain"] == {"gflop_per_second": pytest.approx(40.0), "of_gemm": pytest.approx(0.4), "gemm_precision": "fp32"}
    assert c["loops"]["bf16"]["of_gemm"] == pytest.approx(200e9 / 300e9)
    assert c["best_vs_plain"] == pytest.approx(300e9 / 400e6 / 100.0)
    assert c["training_mflop_per_image"] == pytest.approx(400.0)


def test_profile_probes_do_not_judge_whether_they_learned():
    from abd_edge.apps.profiling import VARIANTS, engine_config

    # probes stopped after seconds learn little by design; the learner's NewClassesNotLearnedWarning
    # (floor 0.5 by default) printed in the middle of the profile read as a failed run
    assert all(engine_config(v, 1).new_class_accuracy_floor == 0.0 for v in VARIANTS.values())
