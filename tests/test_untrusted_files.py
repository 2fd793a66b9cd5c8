"""Untrusted files: a checkpoint built to run code is refused before anything unpickles it, headstart
reads checkpoints as data only, and no API key ends up in a run's files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_user_error, only_run_dir, run_train

SRC = REPO / "src" / "headstart"


class _RunsCode:
    """Unpickling this creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    # Everything a Lightning checkpoint has, plus the payload.
    torch.save({"state_dict": {}, "global_step": 3, "epoch": 0, "loops": {}, "payload": _RunsCode(marker)}, path)
    return path, marker


def test_read_checkpoint_refuses_code_and_names_it(malicious_checkpoint):
    from headstart.checkpoints import read_checkpoint
    from headstart.errors import CheckpointError

    path, marker = malicious_checkpoint
    with pytest.raises(CheckpointError, match="posix.system|os.system") as err:
        read_checkpoint(str(path))
    assert str(path) in str(err.value) and "weights_only=True" in str(err.value)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["ckpt_path", "resume"])
def test_train_refuses_a_malicious_checkpoint(tmp_path, malicious_checkpoint, setting):
    path, marker = malicious_checkpoint
    # resume=<run dir> finds its checkpoints/last.ckpt, as resume=auto would.
    override = f"ckpt_path={path}" if setting == "ckpt_path" else f"resume={path.parent.parent}"
    proc = run_train(["experiment=vision_classification", "logger=csv", override], tmp_path)
    assert_user_error(proc, str(path), "not a plain checkpoint", "system")
    assert not marker.exists(), "the checkpoint's code ran"


def test_headstart_loads_checkpoints_as_data_only():
    """Every torch.load in headstart's code says weights_only=True (Lightning's goes through
    AtomicCheckpointIO, which forces it)."""
    calls = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start():text.index(")", match.start()) + 1]
            calls.append((path.relative_to(SRC), "weights_only=True" in call))
    assert calls and all(safe for _, safe in calls), calls


@pytest.mark.slow
def test_no_api_key_in_the_run_directory(tmp_path):
    key = "hs0fake0wandb0key0" + "7" * 22  # the 40 characters of a W&B key
    os.environ["WANDB_API_KEY"] = key
    try:
        proc = run_train(["experiment=vision_classification", "logger=default", "trainer.max_epochs=1",
                          "model.arch.hidden_sizes=[8,16,32]", "callbacks.step_checkpoint.every_n_train_steps=5"],
                         tmp_path)
    finally:
        del os.environ["WANDB_API_KEY"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    leaking = [str(p.relative_to(run_dir)) for p in files if key.encode() in p.read_bytes()]
    assert not leaking, leaking
    assert key not in proc.stdout + proc.stderr


# -- a shared export builds nothing but headstart's own classes and imports nothing it names ------------------
DATA_MODULE = "headstart.data.text_classification.TextClassificationDataModule"
HEAD = "headstart.heads.sequence_classification.SequenceClassifier"


def _writes(path: Path) -> dict:
    """A config node that, given to Hydra's instantiate, writes ``path``: ``Path(path).write_text(...)``.
    (Hydra's own block list stops os.system and subprocess, not this.)"""
    return {"_target_": "pathlib.Path.write_text",
            "_args_": [{"_target_": "pathlib.Path", "_args_": [str(path)]}, "written by the export"]}


def _creates_writing(path: Path) -> str:
    """A string that Hydra's instantiate resolves into a node that writes ``path`` (``${oc.create:...}``)."""
    return ("${oc.create:{_target_: pathlib.Path.write_text, _args_: [{_target_: pathlib.Path, _args_: ['"
            + str(path) + "']}, written by the export]}}")


def test_the_payloads_write_a_file_when_nothing_checks_them(tmp_path):
    """The crafted nodes the tests below refuse are real: Hydra's instantiate runs them."""
    from hydra.utils import instantiate

    nested, interpolated = tmp_path / "nested", tmp_path / "interpolated"
    instantiate({"_target_": "builtins.dict", "tokenizer": _writes(nested)})
    instantiate({"_target_": "builtins.dict", "tokenizer": _creates_writing(interpolated)})
    assert nested.read_text() == interpolated.read_text() == "written by the export"


def test_the_allow_list_is_headstarts_data_modules_and_heads_from_the_schemas():
    """Every data module a conf/data option builds, and every head a conf/task option builds, is admitted;
    an objective is not a head; a new head with its schema is admitted without another edit."""
    from dataclasses import dataclass

    import yaml

    from headstart.config.allowlist import data_module_targets, head_targets
    from headstart.config.schema import SCHEMAS, HeadConfig

    data, heads = data_module_targets(), head_targets()
    for group, admitted in (("data", data), ("task", heads)):
        for option in sorted((REPO / "conf" / group).glob("*.yaml")):
            [schema] = [entry[f"/schema/{group}@_here_"] for entry in yaml.safe_load(option.read_text())["defaults"]
                        if isinstance(entry, dict) and f"/schema/{group}@_here_" in entry]
            cls = SCHEMAS[(f"schema/{group}", schema)]
            assert (cls._target_ in admitted) == (group == "data" or issubclass(cls, HeadConfig)), option
    assert {DATA_MODULE, "headstart.data.vision.ImageDataModule"} <= data
    assert {HEAD, "headstart.heads.question_answering.QuestionAnswering"} <= heads
    assert "headstart.objectives.masked_lm.MaskedLanguageModeling" not in heads and not heads & data

    @dataclass
    class NewHeadConfig(HeadConfig, group="schema/task", name="test_only_new_head"):
        _target_: str = "headstart.heads.new_head.NewHead"

    try:
        assert "headstart.heads.new_head.NewHead" in head_targets()
    finally:
        del SCHEMAS[("schema/task", "test_only_new_head")]
    assert "headstart.heads.new_head.NewHead" not in head_targets()


def _bad_nodes(marker: Path) -> dict[str, tuple]:
    return {  # case: (data_config, the key the refusal names)
        "os.system": ({"_target_": "os.system", "_args_": [f"touch {marker}"]}, "data_config._target_ is 'os.system'"),
        "a nested node": ({"_target_": DATA_MODULE, "tokenizer": _writes(marker)},
                          "data_config.tokenizer._target_ is 'pathlib.Path.write_text'"),
        "a node in a list": ({"_target_": DATA_MODULE, "train_files": ["a.csv", _writes(marker)]},
                             "data_config.train_files[1]._target_"),
        "a head as data": ({"_target_": HEAD}, f"data_config._target_ is '{HEAD}'"),
        "_args_": ({"_target_": DATA_MODULE, "_args_": [_writes(marker)]}, "data_config._args_ is a Hydra"),
        "_partial_": ({"_target_": DATA_MODULE, "_partial_": True}, "data_config._partial_ is a Hydra"),
        "_recursive_": ({"_target_": DATA_MODULE, "_recursive_": False}, "data_config._recursive_ is a Hydra"),
        "_convert_": ({"_target_": DATA_MODULE, "_convert_": "all"}, "data_config._convert_ is a Hydra"),
        "an interpolation making a node": ({"_target_": DATA_MODULE, "tokenizer": _creates_writing(marker)},
                                           "data_config.tokenizer is \"${oc.create:"),
        "an interpolation reading the environment": ({"_target_": DATA_MODULE, "text_column": "${oc.env:HOME}"},
                                                     "data_config.text_column is '${oc.env:HOME}', an interpolation"),
        "a target that is no name": ({"_target_": DATA_MODULE, "x": {"_target_": ["os", "system"]}},
                                     "data_config.x._target_ is ['os', 'system']"),
        "no mapping": ("os.system", "data_config is 'os.system', not a mapping"),
    }


@pytest.mark.parametrize("case", list(_bad_nodes(Path("m"))))
def test_check_buildable_refuses_all_but_headstarts_classes(case, tmp_path):
    """The check itself, on crafted data configs: each refused, naming the file and the key; as
    mode=predict/evaluate reads them (new_data_config) too."""
    from omegaconf import OmegaConf

    from headstart.config.allowlist import check_buildable, data_module_targets
    from headstart.errors import CheckpointError
    from headstart.pipeline.inference import new_data_config

    marker, source = tmp_path / "written", tmp_path / "export" / "headstart_export.json"
    node, named = _bad_nodes(marker)[case]
    with pytest.raises(CheckpointError) as err:
        check_buildable(node, data_module_targets(), source, "data_config", "data modules")
    message = str(err.value)
    assert message.startswith(f"{source}: {named}") and "\n" not in message, message
    assert "export it again" in message and "not to be trusted" in message
    current = OmegaConf.create({"text_column": "text", "predict_files": ["new.csv"]})
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{source}: {named}")):
        new_data_config({"data_config": node}, current, set(), "/cache", source=source)
    assert not marker.exists()


def test_check_buildable_admits_a_real_exports_configs():
    from headstart.config.allowlist import check_buildable, data_module_targets, head_targets

    data = {"_target_": DATA_MODULE, "train_files": ["/data/train.csv"], "text_column": "text", "delimiter": None,
            "max_length": 32, "label_fraction": 1.0, "overlap_files": []}
    assert check_buildable(data, data_module_targets(), "f", "data_config") is None
    assert check_buildable({"_target_": HEAD, "pooling": "mean"}, head_targets(), "f", "task_config") is None
    assert check_buildable({"num_labels": 3, "label_names": ["a", "b"]}, frozenset(), "f", "task_kwargs") is None


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, shared_cache) -> dict[str, Path]:
    """A real head export (a tiny text classifier fine-tuned through train.py) and its data files."""
    from conftest import TINY_MODEL, write_labeled

    root = tmp_path_factory.mktemp("fine_tuned")
    for split, rows, seed in (("train", 60, 0), ("val", 20, 1), ("test", 20, 2)):
        write_labeled(root / f"{split}.jsonl", rows, seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        proc = run_train(["experiment=text_classification", "data=text_classification_files",
                          *(f"data.{s}_files=[{root / f'{s}.jsonl'}]" for s in ("train", "val", "test")),
                          *TINY_MODEL, "data.max_length=32", "trainer.max_epochs=1", "logger=none"],
                         root / "run", shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"export": only_run_dir(root / "run") / "export", "test": root / "test.jsonl", "cache": shared_cache}


def _tampered(export: Path, to: Path, edit) -> Path:
    """A copy of ``export`` whose headstart_export.json ``edit`` changed."""
    import json
    import shutil

    shutil.copytree(export, to)
    meta = json.loads((to / "headstart_export.json").read_text())
    edit(meta)
    (to / "headstart_export.json").write_text(json.dumps(meta, indent=2))
    return to


def _inference(fine_tuned: dict, mode: str, export: Path, root: Path):
    rows = f"data.{'predict' if mode == 'predict' else 'test'}_files=[{fine_tuned['test']}]"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        return run_train([f"mode={mode}", f"model.init_from={export}", "data=text_classification_files", rows,
                          "logger=none"], root, fine_tuned["cache"])


def _assert_refused(proc, export: Path, *fragments: str) -> None:
    assert_user_error(proc, f"headstart: error: {export / 'headstart_export.json'}: ", *fragments)
    assert proc.stderr.count("headstart: error:") == 1 and "Error executing job" not in proc.stderr, proc.stderr


def _probe_module(tmp_path: Path) -> tuple[str, Path]:
    """A module of the test's own making, which writes a marker file when it is imported."""
    marker = tmp_path / "probe_imported"
    (tmp_path / "hs_untrusted_probe.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('1')\n")
    return "hs_untrusted_probe", marker


@pytest.mark.parametrize("mode", ["predict", "evaluate"])
def test_inference_refuses_an_export_whose_data_config_writes_a_file(mode, fine_tuned, tmp_path):
    marker = tmp_path / "written_by_the_export"
    export = _tampered(fine_tuned["export"], tmp_path / "shared",
                       lambda meta: meta["data_config"].update(tokenizer=_writes(marker)))
    proc = _inference(fine_tuned, mode, export, tmp_path / "run")
    _assert_refused(proc, export, "data_config.tokenizer._target_ is 'pathlib.Path.write_text'", "not to be trusted")
    assert not marker.exists(), "the export's node ran"


def test_inference_refuses_os_system_as_headstart_not_hydra(fine_tuned, tmp_path):
    marker = tmp_path / "system_ran"
    export = _tampered(fine_tuned["export"], tmp_path / "shared", lambda meta: meta["task_config"].update(
        {"_target_": "os.system", "_args_": [f"touch {marker}"]}))
    proc = _inference(fine_tuned, "predict", export, tmp_path / "run")
    _assert_refused(proc, export, "task_config._target_ is 'os.system'")
    assert not marker.exists()


def test_inference_imports_no_module_an_export_names(fine_tuned, tmp_path, monkeypatch):
    name, marker = _probe_module(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    export = _tampered(fine_tuned["export"], tmp_path / "shared", lambda meta: meta.update(requires_import=name))
    proc = _inference(fine_tuned, "predict", export, tmp_path / "run")
    _assert_refused(proc, export, f"requires_import is '{name}'", "never a module that a file names")
    assert not marker.exists(), "headstart imported the module the export named"


def test_a_real_export_still_predicts(fine_tuned, tmp_path):
    import json

    proc = _inference(fine_tuned, "predict", fine_tuned["export"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = (only_run_dir(tmp_path) / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 20 and "label" in json.loads(predictions[0])


def _edits(marker: Path, module: str) -> dict[str, tuple]:
    return {  # case: (edit of the metadata, what the refusal names)
        "a nested node in task_config": (lambda meta: meta["task_config"].update(pooling=_writes(marker)),
                                         "task_config.pooling._target_ is 'pathlib.Path.write_text'"),
        "os.system as the head": (lambda meta: meta["task_config"].update(_target_="os.system"),
                                  "task_config._target_ is 'os.system'"),
        "a node in task_kwargs": (lambda meta: meta["task_kwargs"].update(label_names=[_writes(marker)]),
                                  "task_kwargs.label_names[0]._target_"),
        "a target in task_kwargs": (lambda meta: meta["task_kwargs"].update(_target_="os.system"),
                                    "task_kwargs._target_ is 'os.system'"),
        "requires_import": (lambda meta: meta.update(requires_import=module), f"requires_import is '{module}'"),
        "auto_class": (lambda meta: meta.update(auto_class="AutoModelForCausalLM"),
                       "auto_class is 'AutoModelForCausalLM'"),
    }


@pytest.mark.parametrize("case", list(_edits(Path("m"), "m")))
def test_load_module_from_export_refuses_a_crafted_export(case, fine_tuned, tmp_path, monkeypatch):
    """The README's load_module_from_export: a crafted export refused, naming the file and the key,
    with nothing written or imported."""
    import sys

    from headstart.errors import CheckpointError
    from headstart.transfer.export import load_module_from_export

    module, marker = _probe_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    edit, named = _edits(marker, module)[case]
    export = _tampered(fine_tuned["export"], tmp_path / "shared", edit)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{export / 'headstart_export.json'}: {named}")):
        load_module_from_export(export)
    assert not marker.exists() and module not in sys.modules


def test_load_module_from_export_loads_a_real_export(fine_tuned):
    from headstart.heads.sequence_classification import SequenceClassifier
    from headstart.transfer.export import load_module_from_export, read_metadata

    module = load_module_from_export(fine_tuned["export"])
    assert type(module) is SequenceClassifier and not module.training
    assert read_metadata(fine_tuned["export"])["requires_import"] == "headstart.hf_models"  # still written
