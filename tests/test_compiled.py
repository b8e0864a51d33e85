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


def test_a_failing_compiler_falls_back_to_the_eager_result(caplog):
    from torch._dynamo import register_backend

    @register_backend(name="abd_test_broken")
    def broken(gm, example_inputs):  # noqa: ARG001
        raise RuntimeError("this compiler is broken")

    eager, _ = _train(compile=False)
    with caplog.at_level(logging.WARNING, logger="abd_edge.compiled"):
        fallen, _ = _train(compile=True, compile_backend="abd_test_broken")
        unknown, _ = _train(compile=True, compile_backend="abd_no_such_backend")
    assert sum("training eagerly instead" in r.getMessage() for r in caplog.records) == 2
    for model in (fallen.model, unknown.model):
        for (k, a), b in zip(eager.model.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), k
