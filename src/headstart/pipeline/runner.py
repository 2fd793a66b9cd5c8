"""The pretrain -> finetune pipeline: each stage is an ordinary run composed from its own experiment,
in a subdirectory of the pipeline's run directory, with the hand-off wired between them."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from headstart.errors import ConfigError
from headstart.pipeline.stage import run_stage

log = logging.getLogger(__name__)

# Command-line overrides of these keys describe one stage, so in a pipeline they are refused.
_STAGE_ONLY = ("data", "task", "model.init_from", "ckpt_path", "transfer")


def quote(value: Any) -> str:
    """A Python value written in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(quote(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{quote(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def flatten_overrides(overrides: dict[str, Any] | list[str], prefix: str = "") -> list[str]:
    """``{trainer: {max_epochs: 3}, data: my_set}`` -> ``["trainer.max_epochs=3", "data=my_set"]``;
    a list of override strings is taken as it is."""
    if overrides is None:
        return []
    if isinstance(overrides, list):
        return [str(o) for o in overrides]
    out = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten_overrides(value, name + "."))
        elif isinstance(value, str) and "." not in name and re.fullmatch(r"[\w-]+", value):
            out.append(f"{name}={value}")  # a group choice such as data=pydoc_text
        else:
            out.append(f"{name}={quote(value)}")
    return out


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def shared_overrides(task_overrides: list[str]) -> list[str]:
    """The command-line overrides that apply to every stage."""
    shared = []
    for override in task_overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "experiment" or key.startswith("pipeline") or key.startswith("hparams_search"):
            continue
        if any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in _STAGE_ONLY):
            raise ConfigError(
                f"The override {override!r} would apply to every pipeline stage, but {key.split('.')[0]} differs "
                f"between stages. Give it to one stage: +pipeline.pretrain.overrides.{key}=... or "
                f"+pipeline.finetune.overrides.{key}=..."
            )
        shared.append(override)
    return shared


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose
    from hydra.errors import HydraException

    try:
        return compose(config_name=config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(f"A pipeline stage could not be composed from {overrides}: {err}") from None


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    out = Path(cfg.paths.output_dir)
    group = cfg.run_group or f"{cfg.task_name}-{out.name}"
    shared = shared_overrides(list(hydra_cfg.overrides.task))
    pipe = cfg.pipeline
    finetune_overrides = flatten_overrides(_container(pipe.finetune.overrides))
    stages = {
        "pretrain": [f"experiment={pipe.pretrain.experiment}",
                     *flatten_overrides(_container(pipe.pretrain.overrides))],
        "finetune": [f"experiment={pipe.finetune.experiment}", *finetune_overrides,
                     f"model.init_from={quote(str(out / 'pretrain'))}"],
    }
    if pipe.scratch_baseline:
        # Same architecture and tokenizer as the fine-tuned model, random initial weights.
        stages["scratch"] = [f"experiment={pipe.finetune.experiment}", *finetune_overrides,
                             f"model.init_from={quote(str(out / 'pretrain'))}", "transfer=scratch"]

    results = {}
    for name, overrides in stages.items():
        stage_cfg = compose_stage(hydra_cfg.job.config_name, [
            *overrides, *shared, f"paths.output_dir={quote(str(out / name))}",
            f"run_group={quote(group)}", f"run_name={quote(group + '-' + name)}",
        ])
        log.info("Pipeline stage %s: %s", name, " ".join(overrides))
        results[name] = run_stage(stage_cfg)

    summary = compare(results, pipe.metric)
    (out / "pipeline.json").write_text(json.dumps({"metric": pipe.metric, "stages": results, "comparison": summary},
                                                  indent=2))
    print_comparison(summary, pipe.metric, out)
    return {"metrics": {f"{stage}/{pipe.metric}": row["value"] for stage, row in summary.items()}, "stages": results}


def compare(results: dict[str, dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """The downstream metric of the fine-tuned and the scratch model."""
    rows = {}
    for stage in ("finetune", "scratch"):
        if stage in results:
            metrics = results[stage]["metrics"]
            if metric not in metrics:
                raise ConfigError(
                    f"pipeline.metric={metric!r} was not logged by the {stage} stage; it logged "
                    f"{sorted(metrics)}. Set pipeline.metric to one of those."
                )
            rows[stage] = {"value": metrics[metric], "output_dir": results[stage]["output_dir"]}
    return rows


def print_comparison(summary: dict[str, dict[str, Any]], metric: str, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"What pretraining bought ({metric})")
    table.add_column("model")
    table.add_column(metric, justify="right")
    table.add_column("run directory")
    labels = {"finetune": "pretrained + fine-tuned", "scratch": "from scratch"}
    for stage, row in summary.items():
        table.add_row(labels[stage], f"{row['value']:.4f}", row["output_dir"])
    if "finetune" in summary and "scratch" in summary:
        delta = summary["finetune"]["value"] - summary["scratch"]["value"]
        table.add_row("difference", f"{delta:+.4f}", "")
    console = Console(width=140)
    console.print(table)
    console.print(f"Pipeline outputs: {out.resolve()}")
