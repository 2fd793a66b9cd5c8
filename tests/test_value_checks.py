"""Numbers out of range are refused before anything is built, naming the key, the value and the range
(issue 13, case 4), in a single stage and in any stage of a pipeline before the first one trains."""

from __future__ import annotations

import pytest
from conftest import REPO, assert_user_error, run_train, two_at_a_time
from hydra import compose, initialize_config_dir

from headstart.config import register_configs
from headstart.config.checks import Range, problems

register_configs()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(("allowed", "good", "bad"), [
    (Range(1, integer=True, also=()), [1, 7], [0, -1, 1.5, None, True, float("nan")]),
    (Range(0, open_low=True, also=()), [1e-9, 3.0], [0, 0.0, -1e-3, "x"]),
    (Range(0, 1, open_low=True, open_high=True, also=()), [0.15, 0.5], [0.0, 1.0, 1.2]),
    (Range(1, integer=True, also=(-1,)), [-1, 1, 100], [0, -2, None]),
    (Range(0), [0, 0.1, None], [-0.1]),
])
def test_a_range_allows_what_it_says(allowed, good, bad):
    assert all(allowed.allows(v) for v in good), [v for v in good if not allowed.allows(v)]
    assert not any(allowed.allows(v) for v in bad), [v for v in bad if allowed.allows(v)]


def test_every_shipped_experiment_is_in_range():
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        assert problems(composed(f"experiment={path.stem}")) == [], path.stem


def test_each_bad_value_is_named_with_its_range():
    found = problems(composed("experiment=text_mlm", "data.batch_size=0", "task.optimizer.lr=-1",
                              "task.mlm_probability=0.0", "trainer.max_steps=0", "data.max_length=1",
                              "model.arch.hidden_dropout_prob=1.0", "transfer.layer_lr_decay=0"))
    keys = sorted(p.split("=")[0] for p in found)
    assert keys == ["data.batch_size", "data.max_length", "model.arch.hidden_dropout_prob", "task.mlm_probability",
                    "task.optimizer.lr", "trainer.max_steps", "transfer.layer_lr_decay"], found
    assert "task.optimizer.lr=-1 is out of range: it must be a number > 0" in " ".join(found)


CASES = {
    "batch size 0": (["experiment=text_mlm", "data.batch_size=0"], "data.batch_size=0", ">= 1"),
    "batch size -1": (["experiment=vision_simclr", "data.batch_size=-1"], "data.batch_size=-1", ">= 1"),
    "negative lr": (["experiment=text_mlm", "task.optimizer.lr=-1"], "task.optimizer.lr=-1", "> 0"),
    "no masking": (["experiment=text_mlm", "task.mlm_probability=0.0"], "task.mlm_probability=0.0", "(0, 1)"),
    "no steps": (["experiment=text_mlm", "trainer.max_steps=0"], "trainer.max_steps=0", "-1"),
    "1-token blocks": (["experiment=text_clm", "data.max_length=1"], "data.max_length=1", ">= 8"),
    # A finetune-only setting of the default pipeline: refused before its pretraining starts.
    "pipeline stage": (['pipeline.finetune.overrides=["task.optimizer.weight_decay=-1"]'],
                       "task.optimizer.weight_decay=-1", "pipeline stage finetune"),
}


def test_train_py_refuses_values_out_of_range_before_building_anything(tmp_path):
    def case_runner(name):
        def case():
            return run_train(CASES[name][0], tmp_path / name.replace(" ", "_"))
        case.__name__ = name
        return case

    outcome = two_at_a_time(lambda case: case(), [case_runner(name) for name in CASES])
    for name, proc in outcome.items():
        assert_user_error(proc, "headstart: error:", *CASES[name][1:])
        root = tmp_path / name.replace(" ", "_")
        assert not list(root.glob("outputs/*/*/checkpoints")) and not list(root.glob("outputs/**/export")), name
