"""How a pipeline turns its config and the command line into each stage's overrides."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TRAIN, assert_user_error
from omegaconf import OmegaConf

from headstart.errors import ConfigError
from headstart.pipeline.runner import _container, flatten_overrides, quote, shared_overrides


def test_stage_overrides_as_list_dict_or_nothing():
    assert flatten_overrides(_container(None)) == []
    assert flatten_overrides(_container(OmegaConf.create(["data=text_files", "data.batch_size=8"]))) == [
        "data=text_files", "data.batch_size=8"]
    nested = OmegaConf.create({"trainer": {"max_epochs": 3}, "data": "text_files", "seed": 7,
                               "data_files": ["a b.txt"]})
    assert flatten_overrides(_container(nested)) == [
        "trainer.max_epochs=3", "data=text_files", "seed=7", "data_files=['a b.txt']"]


def test_quote_round_trips_through_hydra_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in ["/tmp/it's here/run", 3, 0.5, None, True, ["a", "b c"], "x=y"]:
        parsed = parser.parse_override(f"key={quote(value)}").value()
        assert parsed == value


def test_shared_overrides_skip_pipeline_keys_and_refuse_stage_keys():
    assert shared_overrides(["experiment=text_mlm_pipeline", "trainer.max_epochs=2", "model=bert_small",
                             "pipeline.scratch_baseline=false", "logger=csv"]) == [
        "trainer.max_epochs=2", "model=bert_small", "logger=csv"]
    for stage_only in ("data.batch_size=8", "task=masked_lm", "model.init_from=x", "+task.foo=1"):
        with pytest.raises(ConfigError, match="pipeline.pretrain.overrides"):
            shared_overrides([stage_only])


def test_default_paths_resolve_before_the_run_starts(tmp_path):
    """With paths at their defaults (under the working directory) the run-directory guard still works."""
    proc = subprocess.run([sys.executable, str(TRAIN), "data.batch_size=8"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert_user_error(proc, "pipeline.pretrain.overrides")
    assert "GuardRunDir" not in proc.stderr


def _stage_overrides(command_line: list[str], stage: str) -> list[str]:
    """What a pipeline stage gets from its experiment and the command line, as the runner computes it."""
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from headstart.config import register_configs
    from headstart.pipeline.runner import stage_overrides

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=command_line)
        return stage_overrides(cfg, stage, command_line, "train")


def test_command_line_stage_overrides_add_to_the_experiments_own():
    own = ["trainer.max_steps=300", "trainer.max_epochs=null"]
    assert _stage_overrides(["experiment=label_efficiency_text"], "finetune")[:2] == own
    added = _stage_overrides(["experiment=label_efficiency_text", 'pipeline.finetune.overrides=["data.batch_size=8"]'],
                             "finetune")
    assert added[:2] == own and added[-1] == "data.batch_size=8"
    # An override of a key the experiment sets replaces that entry, wherever it stood.
    replaced = _stage_overrides(["experiment=label_efficiency_text",
                                 'pipeline.finetune.overrides=["trainer.max_steps=50"]'], "finetune")
    assert "trainer.max_steps=300" not in replaced and replaced.count("trainer.max_steps=50") == 1
    assert "trainer.max_epochs=null" in replaced


def test_key_form_keeps_a_group_choice_and_its_keys():
    """+pipeline.pretrain.overrides.data=text_files and ...data.train_files=[...] together: the config
    can hold only one of them (data becomes a mapping), the stage gets both. (The key form needs an
    experiment that gives the stage no list of its own: Hydra cannot add a key to a list.)"""
    got = _stage_overrides(["experiment=text_mlm_pipeline", "+pipeline.pretrain.overrides.data=text_files",
                            "+pipeline.pretrain.overrides.data.train_files=[a.txt]"], "pretrain")
    assert got == ["data=text_files", "data.train_files=[a.txt]"]


def test_merge_overrides_replaces_by_key():
    from headstart.pipeline.runner import merge_overrides

    assert merge_overrides(["a=1", "+b=2", "model=x"], ["b=3", "c=4"]) == ["a=1", "model=x", "b=3", "c=4"]
    # ~key drops the experiment's entry for key; for a key the experiment does not set it stays Hydra's deletion.
    assert merge_overrides(["task.mode=document", "a=1"], ["~task.mode", "~other"]) == ["a=1", "~other"]


def test_search_grids_cross_learning_rates_with_each_stages_search():
    from headstart.pipeline.runner import candidate_name, search_grids

    pipe = OmegaConf.create({"learning_rates": [0.01, 0.1], "finetune": {"search": ["transfer.layer_lr_decay=0.1,1.0"]},
                             "scratch": {"search": None}})
    grids = search_grids(pipe, {"finetune": [], "scratch": []})
    assert [candidate_name(s) for s in grids["finetune"]] == [
        "lr0.01-layer_lr_decay0.1", "lr0.01-layer_lr_decay1", "lr0.1-layer_lr_decay0.1", "lr0.1-layer_lr_decay1"]
    assert grids["scratch"] == [{"task.optimizer.lr": 0.01}, {"task.optimizer.lr": 0.1}]
    assert search_grids(OmegaConf.create({"learning_rates": None}), {"finetune": []}) == {"finetune": []}
    with pytest.raises(ConfigError, match="pipeline.learning_rates"):
        search_grids(OmegaConf.create({"learning_rates": [0.0]}), {"finetune": []})
    one = search_grids(OmegaConf.create({"learning_rates": None, "finetune": {"search": ["data.batch_size=8"]}}),
                       {"finetune": []})
    assert one == {"finetune": [{"data.batch_size": 8}]}
    with pytest.raises(ConfigError, match="pipeline.finetune.search"):
        search_grids(OmegaConf.create({"learning_rates": None, "finetune": {"search": ["no value"]}}), {"finetune": []})
