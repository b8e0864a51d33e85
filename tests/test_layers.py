"""Layers: engine <- export <- runtime <- apps, one way; no import cycle, even through imports inside
functions; the runtime imports no torch, no export, no engine; a runtime-only install says which extra a
torch feature needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import check_imports  # noqa: E402  (tools/check_imports.py)

sys.path.remove(str(REPO / "tools"))

# Run in a child where torch (and the other train-side packages) cannot be imported, as on a device.
_BLOCK = "import sys\nfor m in ('torch', 'torchvision', 'onnx', 'onnxscript', 'safetensors', 'opacus', 'sklearn'):\n    sys.modules[m] = None\n"


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_static_layering_rules_hold():
    lines, errors = check_imports.report()
    assert errors == [], errors
    runtime_line = lines[0]
    assert "abd_edge.runtime.device" in runtime_line and "abd_edge.export" not in runtime_line


def test_checker_catches_a_forbidden_import(tmp_path, monkeypatch):
    """The check can fail: a runtime module that imports the engine is reported."""
    fake = tmp_path / "runtime"
    fake.mkdir()
    (fake / "__init__.py").write_text("from .device import x\n")
    (fake / "device.py").write_text("import torch\nfrom abd_edge.engine import Normalizer\nx = 1\n")
    monkeypatch.setitem(check_imports.ROOTS, "abd_edge.runtime", fake)
    _, errors = check_imports.report()
    assert any("torch" in e for e in errors) and any("abd_edge.engine" in e for e in errors), errors


def _fake_tree(tmp_path, monkeypatch, files: dict[str, str]) -> list[str]:
    """Lay out a small abd_edge tree (engine/export/runtime/apps) and return the checker's errors on it."""
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg, folder in (("abd_edge", "abd_edge"), ("abd_edge.export", "export"), ("abd_edge.runtime", "runtime")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
        monkeypatch.setitem(check_imports.ROOTS, pkg, tmp_path / folder)
    return check_imports.report()[1]


def test_checker_catches_imports_into_a_higher_layer(tmp_path, monkeypatch):
    errors = _fake_tree(tmp_path, monkeypatch, {
        "abd_edge/engine.py": "def f():\n    from abd_edge.export import bundle\n",  # lazy, still upward
        "abd_edge/apps/__init__.py": "",
        "abd_edge/apps/cli.py": "x = 1\n",
        "export/bundle.py": "from abd_edge.extras import import_or_explain\n"
                            "def g():\n    return import_or_explain('abd_edge.apps.cli', feature='x')\n",
        "runtime/device.py": "from abd_edge import engine\n",  # downward: allowed
    })
    assert "engine module abd_edge.engine imports export module abd_edge.export.bundle (inside a function)" in errors
    assert "export module abd_edge.export.bundle imports apps module abd_edge.apps.cli (inside a function)" in errors
    assert not any("abd_edge.runtime.device imports" in e for e in errors), errors


def test_checker_catches_a_cycle_through_imports_inside_functions(tmp_path, monkeypatch):
    errors = _fake_tree(tmp_path, monkeypatch, {
        "abd_edge/learner.py": "from abd_edge import checkpoint\n",
        "abd_edge/checkpoint.py": "def load():\n    from abd_edge.learner import Learner\n",
    })
    assert errors == ["import cycle (through imports inside functions): ['abd_edge.checkpoint', 'abd_edge.learner']"], errors


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert check_imports.strongly_connected(graph) == [["a", "b", "c"]]


def test_runtime_side_imports_without_torch():
    code = (
        "import abd_edge, abd_edge.runtime, abd_edge.apps.cli, abd_edge.describe, abd_edge.signing, abd_edge.environment\n"
        "loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('torch', 'onnx'))\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('abd_edge.export', 'abd_edge.engine', 'abd_edge.learner')))\n"
        "assert not loaded and not bad, (loaded, bad)\nprint('ok')\n"
    )
    res = _run_blocked(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.parametrize(
    "code, extra",
    [
        ("from abd_edge import Learner", "train"),
        ("import abd_edge.export", "train"),
        ("from abd_edge.extras import require; require('opacus', feature='DP-SGD')", "privacy"),
    ],
)
def test_torch_features_name_their_extra(code, extra):
    res = _run_blocked(
        "from abd_edge.errors import MissingDependencyError\n"
        f"try:\n    {code}\nexcept MissingDependencyError as e:\n    print(e)\nelse:\n    print('no error')\n"
    )
    assert res.returncode == 0, res.stderr
    assert f"pip install 'abd-edge[{extra}]'" in res.stdout, res.stdout


def test_cli_without_torch_names_the_extra_and_info_works(tmp_path):
    res = _run_blocked(
        "from abd_edge.apps.cli import main\n"
        f"sys.exit(main(['learn', {str(tmp_path)!r}, '--learner', {str(tmp_path / 'l')!r}]))\n"
    )
    assert res.returncode == 2 and "abd-edge[train]" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = _run_blocked("from abd_edge.apps.cli import main\nsys.exit(main(['bench', '--tasks', '2']))\n")
    assert res.returncode == 2 and "abd-edge[bench]" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = _run_blocked("from abd_edge.apps.cli import main\nsys.exit(main(['info']))\n")
    assert res.returncode == 0 and '"abd_edge"' in res.stdout, res.stderr
