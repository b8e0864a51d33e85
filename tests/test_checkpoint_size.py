from abd_edge import DreamConfig, Learner
from conftest import make_task, tiny_config


def test_keep_optimizer_false_saves_no_adam_state(tmp_path):
    from safetensors import safe_open

    for keep in (True, False):
        learner = Learner(tiny_config("abd", dream=DreamConfig(iterations=2, batch_size=8, keep_optimizer=keep)))
        learner.learn_new_classes(make_task([0, 1]))
        d = learner.save(tmp_path / f"keep{keep}")
        with safe_open(str(d / "weights.safetensors"), "pt") as f:
            has_adam = any(k.startswith("generator_opt.") for k in f.keys())
        assert has_adam is keep
        assert Learner.load(d).tasks_learned == 1
