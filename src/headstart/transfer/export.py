"""Writing a model as a Hugging Face model directory that the next stage (or anyone) can load.

A pretraining objective exports its backbone (:func:`write_export`, loaded with ``AutoModel``); a
downstream head exports the whole model for its task's auto class (:func:`export_head`):
transformers' own class where headstart's head is the same computation (token classification,
extractive QA, ViT/ResNet image classification), else a ``headstart_head`` model of
:mod:`headstart.hf_models`. Every export has ``headstart_export.json`` (where it came from) and a
model card, ``README.md``. :func:`load_module_from_export` turns a head export back into headstart's
module.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from headstart.data.files import file_sha256

log = logging.getLogger(__name__)

EXPORT_METADATA = "headstart_export.json"
MODEL_CARD = "README.md"

#: A head's ``hf_task`` -> (transformers auto class, headstart_head class, pipeline tag).
HF_TASKS = {
    "sequence": ("AutoModelForSequenceClassification", "HeadstartForSequenceClassification", "text-classification"),
    "image": ("AutoModelForImageClassification", "HeadstartForSequenceClassification", "image-classification"),
    "token": ("AutoModelForTokenClassification", "HeadstartForTokenClassification", "token-classification"),
    "span": ("AutoModelForQuestionAnswering", "HeadstartForQuestionAnswering", "question-answering"),
}
#: headstart's model types -> the module whose import registers them with transformers' auto classes.
#: Loading an export imports the one its config.json's model_type names here, never a module named by
#: the export's files (its ``requires_import`` is written for the model card and older readers only).
REGISTERING_MODULES = {"headstart_head": "headstart.hf_models", "headstart_cnn": "headstart.backbones.vision",
                       "headstart_word2vec": "headstart.backbones.word2vec"}
#: The transformers auto classes an export may name (its ``auto_class``) to be loaded with.
AUTO_CLASSES = ("AutoModel", *dict.fromkeys(auto for auto, _, _ in HF_TASKS.values()))
#: Entries of an export's task_config that loading it sets itself (a loaded module trains nothing):
#: nothing in them is built.
_SET_BY_LOADER = ("backbone", "optimizer", "scheduler")


def write_export(net, processor, directory: str, metadata: dict[str, Any]) -> None:
    """``save_pretrained`` (safetensors) + processor (tokenizer) + headstart metadata + model card,
    written atomically."""
    import headstart

    target = Path(directory)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # The model's own parameter names, which the hand-off matches against the backbone's: transformers 5
    # would otherwise write some models (ViT) in their older checkpoint layout. Both load with from_pretrained.
    kwargs = {"save_original_format": False} if "save_original_format" in inspect.signature(
        net.save_pretrained).parameters else {}
    try:
        net.save_pretrained(str(tmp), safe_serialization=True, **kwargs)
        if processor is not None:
            processor.save_pretrained(str(tmp))
        meta = {
            "format": 1,
            "headstart_version": headstart.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backbone_prefix": net.base_model_prefix if net.base_model is not net else "",
            # The architecture the weights were trained in: a config.json edited afterwards is detected.
            "config_sha256": file_sha256(tmp / "config.json"),
            **_how_to_load(net),
            **metadata,
        }
        (tmp / EXPORT_METADATA).write_text(json.dumps(meta, indent=2, default=str))
        (tmp / MODEL_CARD).write_text(model_card(meta))
    except Exception as err:  # a full disk: no half-written export.tmp<pid>/ left behind
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports the file's OSError as its own SafetensorError, "I/O error: ... (os error N)".
        if not isinstance(err, OSError) and "os error" not in str(err) and "I/O error" not in str(err):
            raise
        from headstart.checkpoints import write_failed

        raise write_failed(target, "export", err) from None
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def read_metadata(directory: Path) -> dict[str, Any]:
    path = Path(directory) / EXPORT_METADATA
    return json.loads(path.read_text()) if path.exists() else {}


def _how_to_load(net) -> dict[str, Any]:
    """A backbone export's defaults for the metadata entries that say how to load it."""
    name = type(net).__name__
    if name.endswith(("ForMaskedLM", "ForPreTraining")):
        tag = "fill-mask"
    elif name.endswith(("ForCausalLM", "LMHeadModel")):
        tag = "text-generation"
    else:
        tag = "image-feature-extraction" if net.main_input_name == "pixel_values" else "feature-extraction"
    return {"auto_class": "AutoModel", "model_class": name, "pipeline_tag": tag,
            "requires_import": REGISTERING_MODULES.get(net.config.model_type)}


# -- downstream heads --------------------------------------------------------------------------------
def export_head(head, directory: str, processor, metadata: dict[str, Any]) -> None:
    """Write a downstream head (backbone + its linear layer) as the model its task's auto class loads,
    with the same outputs as ``head`` (checked on a probe batch before it is written)."""
    auto_class, _, pipeline_tag = HF_TASKS[head.hf_task]
    model = hf_head_model(head, processor)
    write_export(model, _returning(processor, head.model_inputs), directory,
                 {"auto_class": auto_class, "pipeline_tag": pipeline_tag, **metadata})


def _returning(processor, inputs: tuple[str, ...]):
    """The tokenizer to export, made to return every input the head reads: called as transformers' users
    call it (``tokenizer(question, context)``) it then gives what training gave, such as the token types
    that mark a QA context. Other processors, and tokenizers that already do, are exported as they are."""
    names = list(getattr(processor, "model_input_names", None) or [])
    missing = [name for name in inputs if name not in names]
    if not names or not missing:
        return processor
    processor = copy.deepcopy(processor)
    processor.model_input_names = [*names[:1], *missing, *names[1:]]  # input_ids, token_type_ids, attention_mask
    processor.init_kwargs["model_input_names"] = processor.model_input_names  # what save_pretrained writes
    return processor


def hf_head_model(head, processor=None):
    """The transformers model that computes what ``head`` does, its weights copied from ``head``:
    transformers' own class for the task when the head allows it (``hf_stock``) and its weights map
    onto it with the same outputs, else the ``headstart_head`` class."""
    import transformers

    from headstart import hf_models

    auto_class, registered, _ = HF_TASKS[head.hf_task]
    backbone, linear, dropout = head.backbone, head.head[-1], head.head[0].p
    settings = {"num_labels": linear.out_features, **head.hf_settings()}
    pooling = settings.pop("pooling", None)
    builders = []
    if head.hf_stock:
        def stock():
            config = copy.deepcopy(backbone.config)
            for key, value in settings.items():
                setattr(config, key, value)
            if hasattr(config, "classifier_dropout"):
                config.classifier_dropout = dropout
            return getattr(transformers, auto_class).from_config(config)
        builders.append(stock)

    def own():
        config = hf_models.HeadstartHeadConfig(
            backbone={k: v for k, v in backbone.config.to_diff_dict().items() if k != "transformers_version"},
            backbone_kwargs={"add_pooling_layer": False} if getattr(backbone, "pooler", True) is None else {},
            pooling=pooling, feature_size=linear.in_features, classifier_dropout=dropout, **settings)
        return getattr(hf_models, registered)(config)
    builders.append(own)

    batch = probe_batch(backbone, processor)
    for build in builders:
        try:
            model = build()
            pairs = tensor_pairs(head, model)
        except Exception as err:  # noqa: BLE001 - transformers has no such class for this backbone, or another head
            if build is own:
                raise
            log.debug("Export of %s: no transformers class fits (%s)", type(head).__name__, err)
            continue
        model.to(linear.weight.device)
        with torch.no_grad():
            for ours, theirs in pairs:
                theirs.copy_(ours)
        differ = _differ(head, model, batch)
        if differ is None:
            break
        if build is own:
            log.warning("The export of %s differs from it on a probe batch (%s)", type(head).__name__, differ)
        else:
            log.info("%s does not compute what %s does (%s); it is exported as a headstart_head model",
                     type(model).__name__, type(head).__name__, differ)
    return model.cpu()


class MappingError(ValueError):
    """headstart's weights do not map one to one onto a transformers model's."""


def tensor_pairs(head, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(headstart tensor, transformers tensor) pairs covering both models: the backbones' tensors by
    name, and the head's linear layer onto the transformers model's one layer outside its backbone."""
    ours = head.backbone.state_dict(keep_vars=True)
    theirs = model.base_model.state_dict(keep_vars=True)
    if model.base_model is model or ours.keys() != theirs.keys():
        raise MappingError(f"{type(model).__name__}'s backbone has other tensors than {type(head.backbone).__name__}")
    inside = {id(t) for t in theirs.values()}
    rest = {id(t): t for t in model.state_dict(keep_vars=True).values() if id(t) not in inside}
    by_shape = {tuple(t.shape): t for t in rest.values()}
    linear = head.head[-1]
    pairs = [(ours[k], theirs[k]) for k in ours]
    pairs += [(linear.weight, by_shape.get(tuple(linear.weight.shape))),
              (linear.bias, by_shape.get(tuple(linear.bias.shape)))]
    if len(rest) != 2 or any(theirs is None or ours.shape != theirs.shape for ours, theirs in pairs):
        raise MappingError(f"{type(model).__name__}'s head is not one linear layer of {tuple(linear.weight.shape)} "
                           "with a bias, or its backbone's shapes differ")
    return pairs


def probe_batch(backbone, processor=None) -> dict[str, torch.Tensor]:
    """Two random inputs for the backbone (text: the second half-padded, with two token types where the
    model has them), to compare two models on."""
    gen = torch.Generator().manual_seed(0)
    config = backbone.config
    if backbone.main_input_name == "pixel_values":
        size = getattr(processor, "image_size", None) or getattr(config, "image_size", None) or 32
        channels = getattr(processor, "num_channels", None) or config.num_channels
        return {"pixel_values": torch.randn(2, channels, size, size, generator=gen)}
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 16
    length = min(16, positions)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if (getattr(config, "type_vocab_size", 0) or 0) >= 2:
        batch["token_type_ids"] = (torch.arange(length) >= length // 3).long().expand(2, -1).clone()
    return batch


@contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """Modules in eval mode (no dropout) and no gradients for a block; their modes restored after."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def hf_outputs(model, hf_task: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """What a head's transformers model predicts: logits, or QA's start and end logits."""
    out = model(**batch)
    return (out.start_logits, out.end_logits) if hf_task == "span" else (out.logits,)


def _differ(head, model, batch: dict[str, torch.Tensor]) -> str | None:
    """How the two models' outputs on ``batch`` differ (in eval mode), or None when they agree."""
    device = head.head[-1].weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    # Eager even where speed.compile compiled the network: the probe's shapes would compile it again.
    with evaluating(head, head.backbone, model), torch.compiler.set_stance("force_eager"):
        expected, got = head.hf_outputs(batch), hf_outputs(model, head.hf_task, batch)
    exact = head.head[-1].weight.dtype == torch.float32
    for ours, theirs in zip(expected, got, strict=True):
        if ours.shape != theirs.shape:
            return f"output shape {tuple(theirs.shape)}, expected {tuple(ours.shape)}"
        if head.hf_task == "span":  # positions of real tokens (headstart masks the padding)
            real = batch["attention_mask"].bool()
            ours, theirs = ours[real], theirs[real]
        ours, theirs = ours.float(), theirs.float()
        if not torch.allclose(ours, theirs, rtol=1e-4 if exact else 1e-2, atol=1e-4 if exact else 1e-2):
            return f"largest difference {float((ours - theirs).abs().max()):.3g}"
    return None


# -- a head export back into headstart's module -------------------------------------------------------
def registering_module(export_dir: str | Path) -> str | None:
    """The module whose import registers the export's model type with transformers: the one
    :data:`REGISTERING_MODULES` gives for its config.json's ``model_type`` (None for transformers' own
    types). A file never chooses what is imported."""
    try:
        config = json.loads((Path(export_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # from_pretrained reports the missing or damaged config.json
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return REGISTERING_MODULES.get(model_type) if isinstance(model_type, str) else None


def load_hf_model(export_dir: str | Path):
    """The transformers model of an export, loaded with the auto class its metadata names (one of
    :data:`AUTO_CLASSES`), after importing the module that registers its model type, if headstart's
    (:func:`registering_module`). An export whose ``requires_import`` names another module than that
    is refused: headstart made it with the same registry, so the file was edited, and nothing a file
    names is imported."""
    import importlib

    import transformers

    from headstart.config.allowlist import ADVICE
    from headstart.errors import CheckpointError

    source = Path(export_dir) / EXPORT_METADATA
    meta = read_metadata(Path(export_dir))
    auto_class = meta.get("auto_class") or "AutoModel"
    if auto_class not in AUTO_CLASSES:
        raise CheckpointError(f"{source}: auto_class is {str(auto_class)[:100]!r}, not one of the classes headstart "
                              f"loads an export with ({', '.join(AUTO_CLASSES)}). {ADVICE}")
    module = registering_module(export_dir)
    named = meta.get("requires_import")
    if named and named != module:
        raise CheckpointError(
            f"{source}: requires_import is {str(named)[:100]!r}, but headstart imports "
            f"{f'{module!r}' if module else 'nothing'} for an export of this model type (its config.json) and never "
            f"a module that a file names. {ADVICE}")
    if module is not None:
        importlib.import_module(module)
    return getattr(transformers, auto_class).from_pretrained(str(export_dir))


def load_module_from_export(export_dir: str | Path):
    """headstart's module of a head export (one task's head, for an export of a multi-task run) with the
    export's weights, in eval mode; built from the ``task_config`` and ``task_kwargs`` the export
    records. Its processor: ``headstart.data.tokenizer.load_tokenizer(export_dir)`` or
    ``headstart.data.vision.load_image_processor(export_dir)``."""
    from hydra.utils import instantiate

    from headstart.backbones.text import TextBackboneSpec
    from headstart.backbones.vision import VisionBackboneSpec
    from headstart.errors import CheckpointError

    export_dir = Path(export_dir)
    meta = read_metadata(export_dir)
    if meta.get("export_kind") != "head" or not meta.get("task_config"):
        raise CheckpointError(f"{export_dir} is not the export of a downstream head made by this headstart version "
                              f"(its {EXPORT_METADATA} has no task_config); only head exports load back as a module.")
    task_config, task_kwargs = buildable_task(export_dir, meta)
    model = load_hf_model(export_dir)
    backbone_config = model.base_model.config
    image = model.base_model.main_input_name == "pixel_values"
    spec = (VisionBackboneSpec if image else TextBackboneSpec)(arch={"model_type": backbone_config.model_type})
    spec.config = backbone_config  # the export's backbone, as it was bound to the run's data
    module = instantiate(task_config, **{**task_kwargs, "backbone": spec, "optimizer": None, "scheduler": None},
                         _convert_="all")
    with torch.no_grad():
        for ours, theirs in tensor_pairs(module, model):
            ours.copy_(theirs)
    return module.eval()


def buildable_task(export_dir: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The export's ``task_config`` (less what the loader sets itself) and ``task_kwargs``, checked
    before anything is built from them: the config builds one of headstart's heads and nothing else,
    the kwargs are plain settings (:func:`headstart.config.allowlist.check_buildable`)."""
    from headstart.config.allowlist import check_buildable, head_targets

    source = export_dir / EXPORT_METADATA
    task_config = meta.get("task_config")
    if isinstance(task_config, dict):
        task_config = {k: v for k, v in task_config.items() if k not in _SET_BY_LOADER}
    check_buildable(task_config, head_targets(), source, "task_config", "heads")
    task_kwargs = meta.get("task_kwargs") or {}
    check_buildable(task_kwargs, frozenset(), source, "task_kwargs")
    return task_config, task_kwargs


# -- the model card -----------------------------------------------------------------------------------
def model_card(meta: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md) from an export's metadata."""
    what = meta.get("task_name") or meta.get("objective") or "model"
    kind = "downstream head" if meta.get("export_kind") == "head" else "pretrained backbone"
    lines = ["---", "library_name: transformers", "tags:", "- headstart"]
    if meta.get("objective"):
        lines.append(f"- {meta['objective']}")
    if meta.get("pipeline_tag"):
        lines.append(f"pipeline_tag: {meta['pipeline_tag']}")
    lines += ["---", "", f"# {what} ({kind}, headstart)", ""]
    objective = meta.get("objective", "unknown")
    task = f"task `{meta['task_name']}` of a multi-task run, head {objective}" if meta.get("task_name") else objective
    lines.append(f"A {kind} trained by headstart: {task}.")
    labels = (meta.get("task_kwargs") or {}).get("label_names")
    if labels:
        shown = ", ".join(f"`{name}`" for name in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
        lines.append(f"Labels ({len(labels)}): {shown}.")
    auto = meta.get("auto_class") or "AutoModel"
    lines += ["", "```python"]
    if meta.get("requires_import"):
        lines.append(f"import {meta['requires_import']}  # registers headstart's model types with transformers")
    lines += [f"from transformers import {auto}", "", f'model = {auto}.from_pretrained("path/to/this/directory")',
              "```", "", "## Training", ""]
    rows = [("Source run", meta.get("source_run")), ("Config hash", meta.get("config_hash")),
            ("Weights", _checkpoint_text(meta)), ("Started from", _lineage_text(meta)),
            ("Command", f"`{meta['command']}`" if meta.get("command") else None),
            ("Training steps", meta.get("global_step")), ("Finished", meta.get("completed"))]
    lines += [f"- {name}: {value}" for name, value in rows if value is not None]
    lines += _data_section(meta.get("data") or {})
    lines += _metrics_section(meta.get("metrics") or {})
    lines += ["", f"`{EXPORT_METADATA}` holds all of the above, with the run's task and data config.", ""]
    return "\n".join(lines)


def _checkpoint_text(meta: dict[str, Any]) -> str | None:
    kind = meta.get("checkpoint_kind")
    if kind is None:
        return None
    what = "the checkpoint best on validation" if kind == "best" else "the end of training"
    return f"{what} (`{meta['checkpoint']}`)" if meta.get("checkpoint") else what


def _lineage_text(meta: dict[str, Any]) -> str | None:
    source = meta.get("init_from")
    if not source:
        return "random initialisation (no model.init_from)" if "init_from" in meta else None
    text = f"`{source['path']}` (config hash {source.get('config_hash')}, config.json sha256 {source.get('config_sha256')}"
    text += f", objective {source['objective']})" if source.get("objective") else ")"
    if source.get("loaded") is None:
        text += "; its tokenizer only, the weights started from random values (transfer=scratch)"
    elif source.get("loaded") == "embeddings":
        text += "; its input embeddings only"
    return text


def _data_section(data: dict[str, Any]) -> list[str]:
    if not data:
        return []
    lines = ["", "## Data", ""]
    if data.get("builtin"):
        lines += [f"Built-in data set `{data['builtin']}`.", ""]
    files, examples = data.get("files") or {}, data.get("examples") or {}
    if files or examples:
        lines += ["| split | files | examples |", "| --- | --- | --- |"]
        for split in dict.fromkeys([*examples, *files]):
            paths = files.get(split) or []
            shown = ", ".join(f"`{p}`" for p in ([paths] if isinstance(paths, str) else paths)) or "-"
            lines.append(f"| {split} | {shown} | {examples.get(split, '-')} |")
    return lines


def _metrics_section(metrics: dict[str, Any]) -> list[str]:
    names = sorted({k.split("/", 1)[1] for k in metrics if k.startswith(("val/", "test/"))})
    if not names:
        return []
    lines = ["", "## Metrics", "", "| metric | validation | test |", "| --- | --- | --- |"]
    for name in names:
        values = [metrics.get(f"{split}/{name}") for split in ("val", "test")]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in values) + " |")
    return lines
