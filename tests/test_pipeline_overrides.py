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
