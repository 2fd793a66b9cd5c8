"""One declaration per default, and the values a user reads in the README.

Every default of a task, data or model setting lives in its schema (headstart.config.schema). This
file checks that nothing else declares one: each schema against its ``_target_``'s signature (and
its base classes'), the constructors' source for literal defaults, and the group option YAMLs for
restated ones. Then every shipped experiment is composed, resolved and its targets imported, and
the key values the README quotes are pinned.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, OmegaConf, open_dict

from headstart.config import register_configs
from headstart.config.schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Settings a module only records with its hyperparameters: the checkpoint callback reads them from the
# config (task.monitor), so the constructor takes them without a default of its own.
RECORDED_ONLY = {"monitor", "monitor_mode"}
# Keys Hydra reads itself.
HYDRA_KEYS = {"_target_", "_recursive_", "_partial_", "_convert_"}


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _schema_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def _targets() -> list[tuple[str, type]]:
    """The registered schemas that name a headstart class to build."""
    found = []
    for (group, name), schema in SCHEMAS.items():
        target = _schema_default(next(f for f in dataclasses.fields(schema) if f.name == "_target_")) \
            if any(f.name == "_target_" for f in dataclasses.fields(schema)) else MISSING
        if isinstance(target, str) and target.startswith("headstart."):
            found.append((f"{group}/{name}", schema))
    return found


def effective_parameters(cls) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters ``cls(...)`` accepts, each with the default that applies: a class's
    ``**kwargs`` go on to the next ``__init__`` of the MRO, so the first class that names a parameter
    sets its default. Also whether unknown keywords are accepted at the end of the chain."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass.__module__.startswith(("lightning", "torch")):
            return params, False
        signature = inspect.signature(init)
        for name, param in list(signature.parameters.items())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            params.setdefault(name, param)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            return params, False
    return params, True


def _normalise(value):
    """Tuples as lists; an empty list or dict as None (a signature's ``files=None`` means no files)."""
    value = list(value) if isinstance(value, tuple) else value
    return None if value in ([], {}) else value


@pytest.mark.parametrize(("where", "schema"), _targets(), ids=[w for w, _ in _targets()])
def test_schema_and_target_signature_agree(where, schema):
    target = _import(_schema_default(next(f for f in dataclasses.fields(schema) if f.name == "_target_")))
    params, open_ended = effective_parameters(target)
    problems = []
    for field in dataclasses.fields(schema):
        if field.name in HYDRA_KEYS:
            continue
        if field.name not in params:
            if not open_ended:
                problems.append(f"{field.name}: the schema has it, {target.__name__}() takes no such argument")
            continue
        param, default = params[field.name], _schema_default(field)
        if param.default is inspect.Parameter.empty or default is MISSING or isinstance(default, str) and "${" in default:
            continue
        if field.name in RECORDED_ONLY and param.default is None:
            continue
        if dataclasses.is_dataclass(default):  # a nested group of settings: see NESTED below
            continue
        if _normalise(param.default) != _normalise(default):
            problems.append(f"{field.name}: schema {default!r}, {target.__name__}() {param.default!r}")
    assert not problems, f"{where} ({schema.__name__}) disagrees with its target:\n" + "\n".join(problems)


# Nested settings and the class that takes them as keyword arguments.
NESTED = {"headstart.config.schema.ImageAugmentConfig": "headstart.data.augment.ImageAugment"}


@pytest.mark.parametrize(("schema_path", "target_path"), NESTED.items())
def test_nested_settings_agree_with_the_class_that_takes_them(schema_path, target_path):
    schema, target = _import(schema_path), _import(target_path)
    params, _ = effective_parameters(target)
    assert {f.name for f in dataclasses.fields(schema)} == set(params)
    for field in dataclasses.fields(schema):
        assert _normalise(params[field.name].default) == _normalise(_schema_default(field)), field.name


def _init_chain(cls):
    """The headstart classes of ``cls``'s MRO whose own ``__init__`` a call reaches (through ``**kwargs``)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if not klass.__module__.startswith("headstart."):
            return
        yield klass, init
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            return


@pytest.mark.parametrize(("where", "schema"), _targets(), ids=[w for w, _ in _targets()])
def test_constructors_write_no_default_of_their_own(where, schema):
    """A constructor parameter that the schema declares takes its default from the schema (an attribute
    such as ``SimCLRConfig.temperature``) or has none; never a literal of its own. (Settings whose
    schema default is an interpolation, like ``seed: ${seed}``, may have a plain Python default.)"""
    declared = {f.name for f in dataclasses.fields(schema) if f.name not in HYDRA_KEYS
                and not (isinstance(_schema_default(f), str) and "${" in _schema_default(f))}
    target = _import(_schema_default(next(f for f in dataclasses.fields(schema) if f.name == "_target_")))
    offenders = []
    for klass, init in _init_chain(target):
        node = ast.parse(textwrap.dedent(inspect.getsource(init))).body[0]
        args = node.args.args + node.args.kwonlyargs
        defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults \
            + node.args.kw_defaults
        for arg, default in zip(args, defaults, strict=True):
            literal = isinstance(default, ast.Constant | ast.List | ast.Tuple | ast.UnaryOp | ast.Dict) and not (
                isinstance(default, ast.Constant) and default.value is None)
            if arg.arg in declared and literal:
                offenders.append(f"{klass.__qualname__}: {arg.arg}={ast.unparse(default)}")
    assert not offenders, f"{where}: defaults written outside {schema.__name__}:\n" + "\n".join(offenders)


def _group_options():
    for path in sorted(CONF.glob("*/*.yaml")) + sorted(CONF.glob("task/*/*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        schema_refs = [d for d in raw.get("defaults", []) if isinstance(d, dict)
                       and any(str(k).startswith("/schema/") for k in d)]
        if schema_refs:
            (ref, name), = schema_refs[0].items()
            yield path, raw, SCHEMAS[(ref.split("@")[0].lstrip("/"), name)]


def test_group_options_set_only_what_differs_from_the_schema():
    restated = []
    for path, raw, schema in _group_options():
        defaults = {f.name: _schema_default(f) for f in dataclasses.fields(schema)}
        for key, value in raw.items():
            if key != "defaults" and key in defaults and defaults[key] is not MISSING \
                    and _normalise(value) == _normalise(defaults[key]):
                restated.append(f"{path.relative_to(ROOT)}: {key}: {value!r} (the schema's default)")
    assert not restated, "group options restating a schema default:\n" + "\n".join(restated)


# -- every shipped experiment ------------------------------------------------------------------------------
def _compose(*overrides: str):
    """The job config as train.py composes it (Hydra's own node set aside, its runtime as a run's)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    OmegaConf.update(cfg, "hydra.runtime.output_dir", "/tmp/headstart-compose-only", force_add=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _targets_in(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in _targets_in(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets_in(value)]
    return []


# What an experiment needs from the command line (its README command gives these).
REQUIRED = {"label_efficiency_text_files": ["pipeline.files.corpus=[corpus.txt]", "pipeline.files.train=[train.tsv]",
                                            "pipeline.files.dev=[dev.tsv]", "pipeline.files.test=[test.tsv]"]}


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_experiment_composes_resolves_and_imports_its_targets(experiment):
    cfg = _compose(*([f"experiment={experiment}", *REQUIRED.get(experiment, [])] if experiment else []))
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    targets = set(_targets_in(resolved))
    assert "lightning.pytorch.Trainer" in targets
    for target in targets:
        assert callable(_import(target)), target


# The values the README quotes, as every entry point sees them (composed, not read from one file).
PINNED = {
    # The default run: word2vec pretraining vs scratch at 100 labels, 3 seeds, each with its tuned rate.
    None: {"pipeline.pretrain.experiment": "text_word2vec", "pipeline.finetune.experiment": "text_classification",
           "pipeline.scratch_baseline": True, "pipeline.metric": "test/acc", "pipeline.label_counts": [100],
           "pipeline.seeds": [0, 1, 2], "pipeline.learning_rates": [3.0e-3, 1.0e-2, 3.0e-2, 1.0e-1]},
    "text_mlm": {"task.mlm_probability": 0.15, "task.mask_replace_prob": 0.8, "task.random_replace_prob": 0.1,
                 "task.next_sentence_prediction": False, "task.monitor": "val/loss"},
    "vision_simclr": {"task.temperature": 0.5, "task.projection_dim": 64, "task.gather_negatives": True},
    "vision_moco": {"task.temperature": 0.2, "task.momentum": 0.99, "task.queue_size": 512},
    "text_simcse": {"task.temperature": 0.05, "task.pooling": "mean"},
    "vision_mae": {"task.mask_ratio": 0.5, "task.norm_pix_loss": False},
    "vision_vae": {"task.kl_weight": 1.0},
    "text_classification": {"task.pooling": "mean", "task.classifier_dropout": 0.1, "task.monitor": "val/acc",
                            "task.monitor_mode": "max"},
    "text_token_classification": {"task.monitor": "val/f1", "task.monitor_mode": "max"},
    "text_regression": {"task.loss": "mse", "task.standardize_targets": True, "task.monitor": "val/mse",
                        "task.monitor_mode": "min"},
    "text_distillation": {"task.temperature": 2.0, "task.alpha": 0.5, "task.mlm_probability": 0.15},
    "text_word2vec": {"task.mode": "skipgram", "task.negatives": 5},
}


@pytest.mark.parametrize("experiment", list(PINNED), ids=[str(e) for e in PINNED])
def test_key_values_of_the_shipped_experiments(experiment):
    cfg = _compose(*([f"experiment={experiment}"] if experiment else []))
    for key, expected in PINNED[experiment].items():
        assert OmegaConf.select(cfg, key) == expected, f"experiment={experiment}: {key}"


def test_the_text_files_recipe_bounds_its_pretraining_and_holds_out_its_test():
    """The README's reviews recipe: pretraining for 30 epochs or 10,000 steps, whichever comes first (a
    large corpus stays within the time budget); dev and test rows that repeat another split dropped,
    and a test left under 100 rows or a fifth of its file refused."""
    cfg = _compose("experiment=label_efficiency_text_files", *REQUIRED["label_efficiency_text_files"])
    pretrain = list(cfg.pipeline.pretrain.overrides)
    assert "trainer.max_epochs=30" in pretrain and "trainer.max_steps=10000" in pretrain
    finetune = list(cfg.pipeline.finetune.overrides)
    assert "data.drop_eval_overlap=true" in finetune and "trainer.max_steps=200" in finetune
    assert list(cfg.pipeline.finetune.search) == ["transfer.layer_lr_decay=0.1,0.3"]
    data = _compose("experiment=text_classification", "data=text_classification_files", "data.train_files=[a.tsv]").data
    assert (data.min_test_rows, data.min_test_share) == (100, 0.2)
