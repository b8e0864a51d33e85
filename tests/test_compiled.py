"""The compiled training forward (abd_edge/compiled.py) against the eager one, on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_task, tiny_config

from abd_edge import Learner
from abd_edge.compute import compile_backend


def _train(**overrides) -> tuple[Learner, list[dict]]:
    torch.manual_seed(0)
    learner = Learner(tiny_config("finetune", compile_backend=overrides.pop("compile_backend", "inductor"), **overrides))
    rep = learner.learn_new_classes(make_task([0, 1, 2], n_per_class=16), show_progress=False)
    return learner, rep.epoch_losses


def test_compile_auto_is_off_on_cpu():
    learner = Learner(tiny_config())
    assert learner.config.compile == "auto" and compile_backend(learner.config, learner.device, None) is None
    on = Learner(tiny_config(compile=True))
    assert compile_backend(on.config, on.device, None) == "inductor"
    assert compile_backend(on.config, on.device, object()) is None  # private / data-parallel setups


def test_the_compiled_forward_trains_as_the_eager_one():
    """aot_eager runs the graph dynamo captures and AOTAutograd's backward: the capture is what could go wrong."""
    eager, eager_losses = _train(compile=False)
    fast, fast_losses = _train(compile=True, compile_backend="aot_eager")
    for a, b in zip(eager_losses, fast_losses):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
    for (k, a), b in zip(eager.model.state_dict().items(), fast.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_the_inductor_forward_trains_as_the_eager_one():
    eager, eager_losses = _train(compile=False)
    fast, fast_losses = _train(compile=True, compile_backend="inductor")
    for a, b in zip(eager_losses, fast_losses):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4)


def _register_broken_backend(name: str) -> str:
    """A torch.compile backend that fails on every graph, registered under ``name``."""
    from torch._dynamo import register_backend

    def broken(gm, example_inputs):  # noqa: ARG001
        raise RuntimeError("this compiler is broken")

    register_backend(broken, name=name)
    return name


def test_a_failing_compiler_falls_back_to_the_eager_result(caplog):
    _register_broken_backend("abd_test_broken")
    eager, _ = _train(compile=False)
    with caplog.at_level(logging.WARNING, logger="abd_edge.compiled"):
        fallen, _ = _train(compile=True, compile_backend="abd_test_broken")
        unknown, _ = _train(compile=True, compile_backend="abd_no_such_backend")
    assert sum("training eagerly instead" in r.getMessage() for r in caplog.records) == 2
    for model in (fallen.model, unknown.model):
        for (k, a), b in zip(eager.model.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), k


def _two_tasks(**overrides) -> tuple[Learner, list]:
    """ABD over two tasks: dreaming after task 1, then replay (generator + teacher) in task 2."""
    from abd_edge import DreamConfig

    torch.manual_seed(0)
    learner = Learner(tiny_config("abd", compile_backend=overrides.pop("compile_backend", "inductor"),
                                  dream=DreamConfig(iterations=1, batch_size=16), **overrides))
    reports = [learner.learn_new_classes(make_task(labels, n_per_class=16, seed=i), show_progress=False)
               for i, labels in enumerate(([0, 1], [2, 3]))]
    return learner, reports


def test_compiled_dreaming_replay_and_teacher_train_as_the_eager_ones(caplog):
    """The dreaming graph (generator, classifier, BN-statistics hooks), the replay draw and the teacher, under aot_eager.

    One dreaming iteration, so that its reported losses come before any Adam
    step (Adam's first step is about lr * sign(g): rounding-level gradient
    differences then move weights by a whole step, and the later tasks
    drift apart by a few tenths of a percent for that reason alone).
    """
    eager, eager_reports = _two_tasks(compile=False)
    with caplog.at_level(logging.WARNING, logger="abd_edge.compiled"):
        fast, fast_reports = _two_tasks(compile=True, compile_backend="aot_eager")
    assert not [r.getMessage() for r in caplog.records if r.name == "abd_edge.compiled"]  # compiled, not fallen back
    for (a, b), tol in zip(zip(eager_reports, fast_reports), (1e-4, 2e-2)):  # task 2 dreams after the drift
        assert b.dream_iterations == a.dream_iterations == 1
        for k, v in a.dream_losses.items():  # the BN term comes from the hooks inside the compiled graph
            assert b.dream_losses[k] == pytest.approx(v, rel=tol, abs=tol / 10), k
    for la, lb in zip(eager_reports[1].epoch_losses, fast_reports[1].epoch_losses):  # includes the teacher's distillation
        for k in la:
            assert lb[k] == pytest.approx(la[k], rel=2e-2, abs=1e-3), k


def test_the_compiled_replay_draw_gives_the_eager_dreams_and_labels():
    from abd_edge.dreaming import ReplaySampler

    learner, _ = _two_tasks(compile=False)
    gen, model = learner._state.generator, learner._state.model
    draws = [ReplaySampler(gen, model, 4, torch.Generator().manual_seed(5), compile_backend=backend).sample(8)
             for backend in (None, "aot_eager")]
    torch.testing.assert_close(draws[1].images, draws[0].images, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(draws[1].old_logits, draws[0].old_logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(draws[1].labels, draws[0].labels)


def test_a_failing_compiler_in_dreaming_falls_back_to_the_eager_result(caplog):
    _register_broken_backend("abd_test_broken_dream")
    eager, eager_reports = _two_tasks(compile=False)
    with caplog.at_level(logging.WARNING, logger="abd_edge.compiled"):
        fallen, fallen_reports = _two_tasks(compile=True, compile_backend="abd_test_broken_dream")
    assert any("training eagerly instead" in r.getMessage() for r in caplog.records)
    assert fallen_reports[0].dream_losses == eager_reports[0].dream_losses
    for (k, a), b in zip(eager.model.state_dict().items(), fallen.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("field,value", [("compile_mode", "turbo"), ("compile_mode", 3), ("cuda_deterministic", "yes")])
def test_bad_compile_settings_are_refused(field, value):
    from abd_edge.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        Learner(tiny_config(**{field: value}))


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """The mode is passed on (CUDA graphs on a GPU); mark_step is a no-op without them."""
    from abd_edge import compiled

    seen = []
    real = torch.compile

    def spy(fn, **kwargs):
        seen.append(kwargs)
        return real(fn, backend="eager")

    monkeypatch.setattr(compiled.torch, "compile", spy)
    _train(compile=True, compile_backend="aot_eager", compile_mode="reduce-overhead")
    assert seen and seen[0]["mode"] == "reduce-overhead"
    compiled.mark_step("inductor", "reduce-overhead")  # no CUDA here: must not raise


def test_cuda_determinism_setting_sets_both_cudnn_flags():
    """cuda_deterministic=False asks cuDNN for its fastest kernels (benchmark mode) instead of repeatable ones."""
    from abd_edge.compute import make_cuda_repeatable

    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        make_cuda_repeatable(False)
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
        make_cuda_repeatable()
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before
