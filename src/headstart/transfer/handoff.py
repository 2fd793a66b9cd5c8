"""Loading a pretrained backbone into a downstream model: strict, except for the declared new head,
and reported (keys loaded, newly initialised, ignored; source run and its config hash)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from headstart.data.files import file_sha256
from headstart.errors import CheckpointError
from headstart.transfer.export import EXPORT_METADATA, read_metadata

log = logging.getLogger(__name__)

_LIST_LIMIT = 8


def resolve_export_dir(path: str, setting: str = "model.init_from") -> Path:
    """An export directory from itself, a stage run directory, or a pipeline run directory;
    ``setting`` is the config key that named ``path``, for the error message."""
    root = Path(path)
    for candidate in (root, root / "export", root / "pretrain" / "export"):
        if (candidate / "config.json").is_file():
            return candidate
    if not root.exists():
        raise CheckpointError(
            f"{setting}={path!r} does not exist. Point it at a pretrain run directory "
            "(outputs/<date>/<time>[/pretrain]) or at its export/ directory."
        )
    raise CheckpointError(
        f"{setting}={path!r} holds no exported model (looked for config.json in it, in export/ and in "
        "pretrain/export/). Did the pretrain run finish? Point it at a finished pretrain run or its export/."
    )


def check_export_modality(export_dir: Path, text_task: bool, setting: str = "model.init_from") -> None:
    """An export carries the processor of its modality (a tokenizer, or an image processor); a text
    task cannot start from an image backbone, nor an image task from a text one."""
    has_tokenizer = any((export_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    has_image_processor = (export_dir / "preprocessor_config.json").is_file()
    if text_task == has_tokenizer or not (has_tokenizer or has_image_processor):
        return
    objective = read_metadata(export_dir).get("objective") or "unknown objective"
    kind, wanted = ("an image backbone", "text") if text_task else ("a text backbone", "image")
    raise CheckpointError(
        f"{setting}={str(export_dir)!r} is the export of {kind} ({objective}); this {wanted} task cannot start from "
        f"it. Give the export of a {wanted} pretraining (e.g. experiment={'text_mlm' if text_task else 'vision_simclr'}),"
        f" or choose the {'image' if text_task else 'text'} task that export was made for."
    )


def read_weights(export_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an export, from safetensors only: pickled weights can run code and are refused."""
    from safetensors.torch import load_file

    shards = sorted(export_dir.glob("*.safetensors"))
    if not shards:
        pickled = [p.name for p in export_dir.glob("*.bin")] + [p.name for p in export_dir.glob("*.pt")]
        what = f"only pickled weights {pickled}, which headstart does not load because they can run code" if pickled \
            else "no model.safetensors"
        raise CheckpointError(
            f"{export_dir} has {what}. Re-save the model with save_pretrained(dir, safe_serialization=True)."
        )
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            weights.update(load_file(str(shard)))
        except Exception as err:  # noqa: BLE001 - a corrupt or truncated file, reported as such
            raise CheckpointError(
                f"{shard} could not be read ({type(err).__name__}: {err}); the file is corrupt or truncated. "
                "Export the model again from its run."
            ) from None
    return weights


def _strip_prefix(key: str, prefix: str) -> str:
    return key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key


def apply_handoff(module, init_from: str, scope: str = "backbone", allow_incomplete: bool = False) -> dict[str, Any]:
    """Load the backbone weights of ``init_from`` into ``module.backbone``; return the hand-off report.

    Every backbone key must be in the source with the same shape; source keys that the backbone
    lacks (the pretraining objective's head) are ignored; parameters outside the backbone (the new
    task head) are newly initialised. Any mismatch stops with the keys and shapes that differ.
    With ``scope="embeddings"`` only the source's input embedding matrix is loaded, into the
    backbone's (same vocabulary and dimension required); the rest of the backbone is new. An export
    of a pretraining that did not finish is refused unless ``allow_incomplete``.
    """
    export_dir = resolve_export_dir(init_from)
    meta = read_metadata(export_dir)
    if meta.get("completed") is False and not allow_incomplete:
        raise CheckpointError(
            f"model.init_from={init_from!r}: the pretraining run that wrote {export_dir} did not finish (its "
            f"{EXPORT_METADATA} says completed: false, at step {meta.get('global_step', '?')}). Resume that run "
            "(resume=<its run directory>) or, to fine-tune from it anyway, set model.allow_incomplete=true."
        )
    backbone = module.backbone
    if scope == "embeddings":
        source, target = _input_embeddings(backbone, export_dir, init_from)
    else:
        prefix = getattr(backbone, "base_model_prefix", "")
        source = {_strip_prefix(k, prefix): v for k, v in read_weights(export_dir).items()}
        if hasattr(backbone, "upgrade_state_dict"):  # an export of an older key layout (headstart_cnn)
            source = backbone.upgrade_state_dict(source)
        target = backbone.state_dict()

    missing = [k for k in target if k not in source]
    mismatched = [f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in target.items() if k in source and source[k].shape != v.shape]
    if missing or mismatched:
        src_cfg = json.loads((export_dir / "config.json").read_text())
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} keys differ in shape ({'; '.join(mismatched[:_LIST_LIMIT])})")
        if missing:
            problems.append(f"{len(missing)} backbone keys are missing from it ({', '.join(missing[:_LIST_LIMIT])})")
        raise CheckpointError(
            f"model.init_from={init_from!r} does not fit this model: {' and '.join(problems)}. The checkpoint is a "
            f"{src_cfg.get('model_type')} model ({_arch_summary(src_cfg)}); the model here is a "
            f"{backbone.config.model_type} ({_arch_summary(backbone.config.to_dict())}). Choose the model config "
            "the checkpoint was trained with (the same model=... as its pretrain run) and its tokenizer."
        )
    if scope == "backbone":  # every shape fits: is it the same network, though?
        _check_architecture(export_dir, meta, backbone, init_from)
    backbone.load_state_dict({k: source[k] for k in target}, strict=scope == "backbone")

    loaded_tensors = {id(t) for k, t in backbone.state_dict(keep_vars=True).items() if k in target}
    new = [k for k, t in module.state_dict(keep_vars=True).items() if id(t) not in loaded_tensors]
    report = {
        "scope": scope,
        "source_dir": str(export_dir.resolve()),
        "source_run": meta.get("source_run"),
        "source_config_hash": meta.get("config_hash"),
        "source_objective": meta.get("objective"),
        "source_completed": meta.get("completed"),
        "loaded": sorted(target),
        "new": sorted(new),
        "ignored": sorted(k for k in source if k not in target),
    }
    log.info("Hand-off from %s: %d backbone keys loaded, %d new (%s), %d ignored", export_dir, len(report["loaded"]),
             len(new), ", ".join(new[:_LIST_LIMIT]), len(report["ignored"]))
    if not meta:
        log.warning("%s has no %s: source run and config hash unknown", export_dir, EXPORT_METADATA)
    return report


# config.json fields that decide what the network computes. Most change a weight's shape too, which the
# key check catches; these are compared by value, so the same shapes with another meaning (4 heads
# instead of 2, gelu instead of relu) stop the run instead of loading silently.
ARCHITECTURE_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads",
    "n_head", "intermediate_size", "n_inner", "hidden_act", "activation_function", "layer_norm_eps",
    "layer_norm_epsilon", "position_embedding_type", "max_position_embeddings", "n_positions", "type_vocab_size",
    "num_channels", "image_size", "patch_size", "hidden_sizes", "depths", "embedding_size", "qkv_bias",
)


def _check_architecture(export_dir: Path, meta: dict[str, Any], backbone, init_from: str) -> None:
    """The export's config.json (unchanged since export) describes the network being built here."""
    config_path = export_dir / "config.json"
    if not config_path.is_file():
        return  # not a transformers model directory: the key and shape check is all there is
    recorded = meta.get("config_sha256")
    if recorded and file_sha256(config_path) != recorded:
        raise CheckpointError(
            f"model.init_from={init_from!r}: {config_path} was changed after the export was written (its hash is not "
            f"the one in {EXPORT_METADATA}), so it no longer describes the network the weights were trained in. "
            "Restore the file (or export the run again); set the new model's architecture with model.arch instead."
        )
    source = json.loads(config_path.read_text())
    if source.get("model_type") == "headstart_head":  # a head's export (headstart.hf_models): its backbone's config
        source = source.get("backbone") or {}
    target = backbone.config.to_dict()
    differ = [f"{k}: export {source[k]!r}, model {target[k]!r}" for k in ARCHITECTURE_FIELDS
              if k in source and k in target and source[k] != target[k]]
    if differ:
        raise CheckpointError(
            f"model.init_from={init_from!r} was trained as another architecture than the model built here "
            f"({'; '.join(differ[:_LIST_LIMIT])}). Its weights would load but compute something else. Build the "
            "model the export describes: the same model=... and model.arch.* as its pretraining run (see the "
            "run's config.yaml)."
        )


def _input_embeddings(backbone, export_dir: Path, init_from: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The export's weights with its input embedding matrix renamed to the backbone's, and the
    backbone's input embedding entry alone (the target of an ``init_scope=embeddings`` hand-off)."""
    from transformers import AutoConfig, AutoModel

    from headstart.backbones.text import register_models

    register_models()
    weight = backbone.get_input_embeddings().weight
    target_key = next(k for k, t in backbone.state_dict(keep_vars=True).items() if t is weight)
    # Which tensor of the export is its input embedding matrix: ask a weightless copy of its model.
    try:
        with torch.device("meta"):
            skeleton = AutoModel.from_config(AutoConfig.from_pretrained(str(export_dir)))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"model.init_from={init_from!r}: its config.json does not describe a model transformers can build "
            f"({str(err).splitlines()[0]}), so its input embeddings cannot be found. Export it with headstart."
        ) from None
    name = next(k for k, t in skeleton.named_parameters() if t is skeleton.get_input_embeddings().weight)
    weights = read_weights(export_dir)
    candidates = [name, f"{skeleton.base_model_prefix}.{name}"]
    source_key = next((k for k in candidates if k in weights), None)
    if source_key is None:
        raise CheckpointError(
            f"model.init_from={init_from!r} has no input embedding matrix (looked for {' or '.join(candidates)}). "
            "Export it again from its run."
        )
    source = {k: v for k, v in weights.items() if k != source_key}
    source[target_key] = weights[source_key]
    if source[target_key].shape != weight.shape:
        (src_vocab, src_dim), (vocab, dim) = source[target_key].shape, weight.shape
        raise CheckpointError(
            f"model.init_from={init_from!r} with model.init_scope=embeddings: its input embeddings are "
            f"{src_vocab} tokens x {src_dim} dims, this model's {target_key} is {vocab} x {dim}. Both must match: "
            f"use the export's tokenizer (leave data.tokenizer unset) and an embedding size of {src_dim} "
            "(model.arch.hidden_size or its equivalent)."
        )
    return source, {target_key: weight}


def _arch_summary(config: dict[str, Any]) -> str:
    keys = ("vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads")
    return ", ".join(f"{k}={config[k]}" for k in keys if k in config)
