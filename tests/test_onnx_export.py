"""ONNX export: checker, dynamic batch, parity with torch, the uint8 NHWC contract, atomic writes, int8.

Exports are the slow part (a few seconds each on a loaded CPU), so one tiny
learner is trained and exported once per module and every check reads those
files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from abd_edge import atomic
from abd_edge.engine import Normalizer
from abd_edge.errors import ConfigError, ExportError, ImageSpecError
import abd_edge.export as ox
from abd_edge.export import onnx_export, onnx_io
from abd_edge.models import build_backbone, build_generator

from conftest import REPO, make_task, tiny_config

ort = pytest.importorskip("onnxruntime")
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument  # noqa: E402


def _snapshot(module: torch.nn.Module) -> dict:
    return {
        "modes": [m.training for m in module.modules()],
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()),
        "requires_grad": [p.requires_grad for p in module.parameters()],
    }


def _same(a: dict, b: dict) -> bool:
    return (
        a["modes"] == b["modes"]
        and a["hooks"] == b["hooks"]
        and a["requires_grad"] == b["requires_grad"]
        and a["state"].keys() == b["state"].keys()
        and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained learner (8x8 grey, 2 classes), its exports, and snapshots taken before exporting."""
    from abd_edge import Learner

    learner = Learner(tiny_config("abd"))
    learner.learn_new_classes(make_task([0, 1]), show_progress=False)
    # Put the generator in train mode (as right after dreaming) and hook the model, to check
    # that the export neither follows nor changes either: BNs must use running stats in the graph.
    learner.generator.train()
    handle = learner.model.bn1.register_forward_hook(lambda *a: None)
    before = {"model": _snapshot(learner.model), "generator": _snapshot(learner.generator)}
    d = tmp_path_factory.mktemp("onnx")
    cls_info = ox.export_classifier(
        learner.model, learner.normalizer, learner.num_classes, learner.input_shape, d / "classifier.onnx"
    )
    gen_info = ox.export_generator(learner.generator, d / "generator.onnx")
    after = {"model": _snapshot(learner.model), "generator": _snapshot(learner.generator)}
    handle.remove()
    return {"learner": learner, "dir": d, "cls": cls_info, "gen": gen_info, "before": before, "after": after}


def test_export_info_and_checker(exported):
    cls, gen = exported["cls"], exported["gen"]
    assert cls["opset"] == 18 and gen["opset"] == 18
    assert cls["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", 8, 8, 1]}]
    assert [o["name"] for o in cls["outputs"]] == ["logits", "probabilities"]
    assert all(o["shape"][1] == 2 and o["dtype"] == "float32" for o in cls["outputs"])
    assert gen["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["batch", 1000]}]
    assert gen["outputs"][0]["name"] == "images" and gen["outputs"][0]["shape"][1:] == [1, 8, 8]
    for info in (cls, gen):
        p = Path(info["path"])
        assert info["bytes"] == p.stat().st_size > 0
        assert info["export_seconds"] > 0
        onnx.checker.check_model(str(p), full_check=True)
    # One self-contained file per model: no external-data side files, no temp leftovers.
    assert sorted(os.listdir(exported["dir"])) == ["classifier.onnx", "generator.onnx"]


def test_export_leaves_learner_untouched(exported):
    for name in ("model", "generator"):
        assert _same(exported["before"][name], exported["after"][name]), name
    assert exported["after"]["model"]["hooks"] == 1


def test_generator_graph_uses_running_stats(exported):
    model = onnx.load(exported["gen"]["path"])
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns, "the final affine-free BN should survive as a BatchNormalization node"
    for n in bns:
        assert len(n.output) == 1
        assert all(a.i == 0 for a in n.attribute if a.name == "training_mode")


def test_dynamic_batch(exported):
    cs = ox.make_session(exported["cls"]["path"])
    gs = ox.make_session(exported["gen"]["path"])
    for n in (1, 5):
        logits, probs = cs.run(None, {"images": np.zeros((n, 8, 8, 1), np.uint8)})
        assert logits.shape == probs.shape == (n, 2)
        (imgs,) = gs.run(None, {"z": np.zeros((n, 1000), np.float32)})
        assert imgs.shape == (n, 1, 8, 8)


def test_classifier_parity_and_contract(exported):
    learner = exported["learner"]
    images = ox.verification_images(learner, 12, seed=3)
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 1)
    wrapper = ox.DeployedClassifier.from_learner(learner)
    res = ox.verify_parity(wrapper, exported["cls"]["path"], {"images": images})
    assert res["n"] == 12 and res["max_abs_diff"] <= 1e-4 and res["top1_equal"] is True
    # The wrapper is the learner's own inference path, under the NHWC uint8 contract.
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ort_logits = ox.make_session(exported["cls"]["path"]).run(["logits"], {"images": images})[0]
    np.testing.assert_allclose(ort_logits, learner.logits(nchw).numpy(), atol=1e-4)
    # Probabilities agree too and are a softmax.
    res_p = ox.verify_parity(wrapper, exported["cls"]["path"], {"images": images}, output="probabilities")
    assert res_p["max_abs_diff"] <= 1e-4


def test_generator_parity(exported):
    z = np.random.default_rng(0).standard_normal((6, 1000)).astype(np.float32)
    res = ox.verify_parity(exported["learner"].generator, exported["gen"]["path"], {"z": z}, output="images")
    assert res["max_abs_diff"] <= 1e-4 and res["top1_equal"] is None and res["n"] == 6
    assert exported["learner"].generator.training  # verify_parity restored train mode


def test_probabilities_sum_to_one(exported):
    images = ox.verification_images(exported["learner"], 9, seed=1)
    _, probs = ox.make_session(exported["cls"]["path"]).run(None, {"images": images})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_ort_refuses_float_input_and_wrong_channels(exported):
    s = ox.make_session(exported["cls"]["path"])
    with pytest.raises(InvalidArgument, match="expected: \\(tensor\\(uint8\\)\\)"):
        s.run(None, {"images": np.zeros((1, 8, 8, 1), np.float32)})
    with pytest.raises(InvalidArgument, match="index: 3 Got: 3 Expected: 1"):
        s.run(None, {"images": np.zeros((1, 8, 8, 3), np.uint8)})
    with pytest.raises(InvalidArgument):  # NCHW instead of NHWC
        s.run(None, {"images": np.zeros((1, 1, 8, 8), np.uint8)})


def test_parity_failure_raises(exported):
    learner = exported["learner"]
    bad = ox.DeployedClassifier.from_learner(learner)
    with torch.no_grad():
        bad.model.get_classifier().bias[:2] += torch.tensor([0.5, -0.5])
    images = ox.verification_images(learner, 6, seed=0)
    with pytest.raises(ExportError, match=r"classifier\.onnx.*differ by .*atol=0\.0001"):
        ox.verify_parity(bad, exported["cls"]["path"], {"images": images})
    with pytest.raises(ExportError, match="no output 'scores'"):
        ox.verify_parity(bad, exported["cls"]["path"], {"images": images}, output="scores")
    with pytest.raises(ExportError, match="must be named"):
        ox.verify_parity(bad, exported["cls"]["path"], {"x": images})


def test_top1_tie_is_forgiven_but_a_flip_is_not(tmp_path):
    """A flip where torch's top two are within atol is numerics, not a broken export."""

    class Shift(torch.nn.Module):
        def __init__(self, flip: bool = False, offset=(0.0, 0.0)):
            super().__init__()
            self.flip = flip
            self.register_buffer("offset", torch.tensor(offset))

        def forward(self, x):
            return (x.flip(1) if self.flip else x) + self.offset

    p = tmp_path / "identity.onnx"
    torch.onnx.export(Shift().eval(), (torch.zeros(2, 2),), dynamo=True, input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False).save(p)
    # ONNX says [0, 5e-5], torch says [5e-5, 0]: within atol, the top-1 flips on a tie.
    res = ox.verify_parity(Shift(flip=True), p, {"x": np.array([[0.0, 5e-5]] * 3, np.float32)})
    assert res["top1_equal"] is False and res["top1_ties"] == 3 and res["max_abs_diff"] <= 1e-4
    # ONNX says [0.5, 1.0], torch says [1.5, 0.0]: every |diff| <= atol=1, but torch's winner leads by 1.5.
    with pytest.raises(ExportError, match="top-1 class differs .* 2 of 2"):
        ox.verify_parity(Shift(offset=(1.0, -1.0)), p, {"x": np.array([[0.5, 1.0]] * 2, np.float32)}, atol=1.0)


def _tiny_generator() -> torch.nn.Module:
    return build_generator("abd_compact", 8, 1)


def test_failed_rename_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "gen.onnx"
    target.write_bytes(b"previous model")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        ox.export_generator(_tiny_generator(), target)
    monkeypatch.undo()
    assert target.read_bytes() == b"previous model"  # the old file is intact, not half-overwritten
    assert os.listdir(tmp_path) == ["gen.onnx"]  # and the temp file was cleaned up


def test_interrupt_at_fault_point_leaves_no_file(tmp_path, monkeypatch):
    """An interrupt (a BaseException) between writing and renaming: no final file, no temp file."""

    def crash(name):
        if name == "export_mid_write":
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "fault_point", crash)  # the one commit protocol's crash hook
    written = []
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(KeyboardInterrupt):
        onnx_io.atomic_write(fresh, lambda tmp: written.append(tmp.write_bytes(b"model")), lambda tmp: None)
    assert written == [5] and not fresh.exists() and os.listdir(tmp_path) == []
    monkeypatch.undo()
    onnx_io.atomic_write(fresh, lambda tmp: tmp.write_bytes(b"model"), lambda tmp: None)  # no fault: committed
    assert fresh.read_bytes() == b"model" and os.listdir(tmp_path) == ["fresh.onnx"]

    def reject(tmp):
        raise ExportError("checker said no")

    with pytest.raises(ExportError, match="checker said no"):
        onnx_io.atomic_write(fresh, lambda tmp: tmp.write_bytes(b"bad"), reject)
    assert fresh.read_bytes() == b"model" and os.listdir(tmp_path) == ["fresh.onnx"]


def test_killed_mid_write_leaves_no_file(tmp_path):
    """A SIGKILL between writing the temp file and the rename (a power cut) leaves no final file."""
    target = tmp_path / "gen.onnx"
    code = textwrap.dedent(
        f"""
        import abd_edge.export as ox
        from abd_edge.models import build_generator
        ox.export_generator(build_generator("abd_compact", 8, 1), {str(target)!r})
        """
    )
    env = {**os.environ, "ABD_EDGE_FAULT_POINT": "export_mid_write", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not target.exists()
    leftovers = os.listdir(tmp_path)
    assert all(name.startswith(".gen.onnx.") and name.endswith(".tmp") for name in leftovers)


def test_int8_quantization_agrees(exported, tmp_path):
    learner = exported["learner"]
    calib = ox.verification_images(learner, 48, seed=10)
    info = ox.quantize_classifier_int8(exported["cls"]["path"], tmp_path / "int8.onnx", calib)
    assert info["bytes"] < 0.5 * info["fp32_bytes"] and info["format"] == "QDQ"
    assert sorted(os.listdir(tmp_path)) == ["int8.onnx"]
    onnx.checker.check_model(info["path"])
    cmp = ox.compare_int8(exported["cls"]["path"], info["path"], ox.verification_images(learner, 64, seed=11))
    assert cmp["n"] == 64
    # The tiny learner is barely trained (its two logits are close), so a few flips are expected.
    assert cmp["top1_agreement"] >= 0.7, cmp
    _, probs = ox.make_session(info["path"]).run(None, {"images": calib[:4]})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # softmax stays float


def test_int8_rejects_bad_calibration(exported, tmp_path):
    p = exported["cls"]["path"]
    with pytest.raises(ImageSpecError, match="uint8"):
        ox.quantize_classifier_int8(p, tmp_path / "q.onnx", np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(ImageSpecError, match=r"\(8, 8, 3\).*\(8, 8, 1\)"):
        ox.quantize_classifier_int8(p, tmp_path / "q.onnx", np.zeros((4, 8, 8, 3), np.uint8))
    assert not (tmp_path / "q.onnx").exists()


def test_latency_helpers(exported):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import latency  # benchmarks/latency.py: a measurement tool, not part of the SDK
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    wrapper = ox.DeployedClassifier.from_learner(exported["learner"])
    threads = torch.get_num_threads()
    o = latency.onnx_latency(exported["cls"]["path"], 2, (8, 8, 1), threads=1, repeats=3, warmup=1)
    t = latency.torch_latency(wrapper, 2, (8, 8, 1), threads=1, repeats=3, warmup=1)
    assert torch.get_num_threads() == threads
    for r in (o, t):
        assert r["median_ms"] > 0 and r["images_per_s"] > 0 and r["batch_size"] == 2 and r["repeats"] == 3
    g = latency.onnx_latency(exported["gen"]["path"], 1, (1000,), repeats=2, warmup=0)
    assert g["median_ms"] > 0


def test_argument_errors(exported):
    learner = exported["learner"]
    m, norm = learner.model, learner.normalizer
    with pytest.raises(ConfigError, match="n_classes=7 exceeds .* 6"):
        ox.DeployedClassifier(m, norm, 7, (1, 8, 8))
    with pytest.raises(ImageSpecError, match="C=3 .* takes 1"):
        ox.DeployedClassifier(m, norm, 2, (3, 8, 8))
    with pytest.raises(ImageSpecError, match="normalizer has 3 means"):
        ox.DeployedClassifier(m, Normalizer(torch.zeros(3), torch.ones(3)), 2, (1, 8, 8))
    with pytest.raises(ConfigError, match="opset .* got 9"):
        ox.export_generator(_tiny_generator(), "/nonexistent/never.onnx", opset=9)
    with pytest.raises(ExportError, match="zdim"):
        ox.export_generator(torch.nn.Linear(2, 2), "/nonexistent/never.onnx")


def test_rgb32_resnet20_and_compact_generator(tmp_path):
    """Shape generality: 32x32 RGB, a 3-stage generator, a head wider than the classes exported."""
    torch.manual_seed(0)
    model = build_backbone("resnet20", 10, 3).eval()
    gen = build_generator("abd_compact", 32, 3)
    with torch.no_grad():  # non-trivial running statistics
        gen.train()(torch.randn(16, gen.zdim))
    norm = Normalizer(torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26]))
    ci = ox.export_classifier(model, norm, 4, (3, 32, 32), tmp_path / "c.onnx")
    gi = ox.export_generator(gen, tmp_path / "g.onnx")
    assert ci["inputs"][0]["shape"] == ["batch", 32, 32, 3] and ci["outputs"][0]["shape"] == ["batch", 4]
    assert gi["outputs"][0]["shape"] == ["batch", 3, 32, 32]
    images = ox.verification_images((norm, gen), 6, seed=0)
    assert images.shape == (6, 32, 32, 3)
    res = ox.verify_parity(ox.DeployedClassifier(model, norm, 4, (3, 32, 32)), ci["path"], {"images": images})
    assert res["max_abs_diff"] <= 1e-4 and res["top1_equal"]
    z = np.random.default_rng(1).standard_normal((3, gen.zdim)).astype(np.float32)
    assert ox.verify_parity(gen, gi["path"], {"z": z}, output="images")["max_abs_diff"] <= 1e-4
    # H and W are not interchangeable: an asymmetric image must give the learner-side logits.
    x = images.copy()
    x[:, :16] = 0
    ort_logits = ox.make_session(ci["path"]).run(["logits"], {"images": x})[0]
    ref = model(norm(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255))[:, :4].detach().numpy()
    np.testing.assert_allclose(ort_logits, ref, atol=1e-4)


def test_parity_tolerance_scales_with_huge_outputs(tmp_path):
    """float32 rounding of logits near 1e5 is not an export bug; an error of the same size on small logits is."""
    import torch.nn as tnn

    class Scale(tnn.Module):
        def __init__(self, factor: float, bump: float = 0.0) -> None:
            super().__init__()
            self.factor, self.bump = factor, bump

        def forward(self, x):
            return x * self.factor + self.bump

    p = tmp_path / "s.onnx"
    onnx_export._export_module(Scale(1.0).eval(), (torch.zeros(2, 2),), ["x"], ["logits"], p, onnx_export.DEFAULT_OPSET)
    big = np.array([[1e5, 1.0]], np.float32)
    # torch output shifted by 0.05 on a row whose largest value is 1e5: 0.05 <= 1e-4 + 1e-6 * 1e5
    assert ox.verify_parity(Scale(1.0, bump=0.05), p, {"x": big})["max_abs_diff"] == pytest.approx(0.05, rel=1e-3)
    with pytest.raises(ExportError, match="differ by"):
        ox.verify_parity(Scale(1.0, bump=0.05), p, {"x": np.array([[10.0, 1.0]], np.float32)})
