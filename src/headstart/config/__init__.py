"""Config registration: structured schemas and resolvers, cheap to import (no torch)."""

from __future__ import annotations

import os

from hydra.core.config_store import ConfigStore

from headstart.config import schema


def hydra_subdir(resume: str | None, ckpt_path: str | None) -> str:
    """Where Hydra writes its record of a start (``.hydra/``): a resumed start beside the first one's,
    in ``.hydra/resume-<time>/``, so the first start's record is never written over."""
    if resume is None and ckpt_path is None:
        return ".hydra"
    from headstart.pipeline.rundir import run_stamp

    return f".hydra/resume-{run_stamp()}"


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (group option YAMLs name them in their defaults) and
    register headstart's resolvers."""
    from omegaconf import OmegaConf

    from headstart.pipeline.rundir import run_stamp

    # Cached: every reading of the run directory within a process gives the same stamp.
    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
    # The directory train.py was started from. Unlike ${hydra:runtime.cwd} it resolves before Hydra
    # sets its runtime config too: when a multirun creates its sweep directory, and under --cfg.
    OmegaConf.register_new_resolver("cwd", os.getcwd, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, use_cache=True, replace=True)
    store = ConfigStore.instance()
    for (group, name), node in schema.SCHEMAS.items():
        store.store(group=group, name=name, node=node)
    _report_yaml_errors_in_one_line()


def _report_yaml_errors_in_one_line() -> None:
    """A config file with broken YAML (one of conf/ or of a hydra.searchpath directory) is reported as
    Hydra reports a bad override, naming the file and line, instead of with a traceback. (Hydra
    re-imports its config-source plugins, so the hook is on the repository that calls them.)"""
    import yaml
    from hydra._internal.config_repository import ConfigRepository
    from hydra.errors import ConfigCompositionException

    load_config = ConfigRepository.load_config
    if getattr(load_config, "reports_yaml_errors", False):
        return

    def load_reporting_yaml_errors(self, config_path: str):
        try:
            return load_config(self, config_path)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            place = f"{where.name}, line {where.line + 1}, column {where.column + 1}" if where else config_path
            raise ConfigCompositionException(
                f"headstart: error: the config {config_path!r} is not valid YAML ({place}: "
                f"{getattr(err, 'problem', None) or err}). Fix that line of the file: a bracket, quote or colon "
                "missing, or indentation off."
            ) from None

    load_reporting_yaml_errors.reports_yaml_errors = True
    ConfigRepository.load_config = load_reporting_yaml_errors
