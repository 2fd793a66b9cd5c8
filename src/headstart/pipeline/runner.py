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
    """Pretrain once, then fine-tune from the export and (the baseline) from scratch: once, or at each
    of ``pipeline.label_fractions`` x ``pipeline.seeds`` with a label-efficiency report."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.resume not in (None, "auto"):
        raise ConfigError(f"resume={cfg.resume!r} names one run, but a pipeline runs several. Use resume=auto with "
                          "hydra.run.dir=<the pipeline's directory>: each stage goes on in its own subdirectory.")
    hydra_cfg = HydraConfig.get()
    out = Path(cfg.paths.output_dir)
    group = cfg.run_group or f"{cfg.task_name}-{out.name}"
    shared = shared_overrides(list(hydra_cfg.overrides.task))
    pipe = cfg.pipeline
    pretrain_dir = quote(str(out / "pretrain"))
    finetune_overrides = [f"experiment={pipe.finetune.experiment}",
                          *flatten_overrides(_container(pipe.finetune.overrides)), f"model.init_from={pretrain_dir}"]
    models = {"finetune": finetune_overrides}
    if pipe.scratch_baseline:
        # Same architecture and tokenizer as the fine-tuned model, random initial weights.
        models["scratch"] = [*finetune_overrides, "transfer=scratch"]

    def run(name: str, overrides: list[str], last: list[str] = ()) -> dict[str, Any]:
        stage_cfg = compose_stage(hydra_cfg.job.config_name, [
            *overrides, *shared, *last, f"paths.output_dir={quote(str(out / name))}",
            f"run_group={quote(group)}", f"run_name={quote(group + '-' + name.replace('/', '-'))}",
        ])
        log.info("Pipeline stage %s: %s", name, " ".join([*overrides, *last]))
        return run_stage(stage_cfg)

    fractions = _label_fractions(pipe.label_fractions)  # checked before anything trains
    results = {"pretrain": run("pretrain", [f"experiment={pipe.pretrain.experiment}",
                                            *flatten_overrides(_container(pipe.pretrain.overrides))])}
    if fractions:
        return _label_efficiency(cfg, run, models, fractions, results, out, group)
    for name, overrides in models.items():
        results[name] = run(name, overrides)
    summary = compare(results, pipe.metric)
    (out / "pipeline.json").write_text(json.dumps({"metric": pipe.metric, "stages": results, "comparison": summary},
                                                  indent=2))
    print_comparison(summary, pipe.metric, out)
    return {"metrics": {f"{stage}/{pipe.metric}": row["value"] for stage, row in summary.items()}, "stages": results}


def _label_fractions(values) -> list[float]:
    fractions = [float(f) for f in values or []]
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"pipeline.label_fractions={fractions} has {bad}, outside (0, 1]: each is the share of the "
                          "training labels a fine-tuning run keeps, e.g. [0.01,0.05,0.1,1.0].")
    return fractions


def _label_efficiency(cfg: DictConfig, run, models: dict[str, list[str]], fractions: list[float],
                      results: dict[str, Any], out: Path, group: str) -> dict[str, Any]:
    """Each model at each label fraction and seed (the last overrides, so they win over the command
    line's), then the label-efficiency report."""
    from headstart.pipeline import label_efficiency

    pipe = cfg.pipeline
    seeds = [int(s) for s in pipe.seeds] if pipe.seeds else [int(cfg.seed)]
    runs = []
    for fraction in fractions:
        for seed in seeds:
            for model, overrides in models.items():
                name = f"{model}/labels{fraction:g}-seed{seed}"
                results[name] = run(name, overrides, [f"data.label_fraction={fraction!r}", f"seed={seed}"])
                metrics = compare({model: results[name]}, pipe.metric)[model]
                runs.append({"label_fraction": fraction, "seed": seed, "model": model, "metric": pipe.metric,
                             "value": metrics["value"], "output_dir": metrics["output_dir"]})
    summary = label_efficiency.report(cfg, runs, pipe.metric, out, group)
    (out / "pipeline.json").write_text(json.dumps({"metric": pipe.metric, "stages": results, "runs": runs,
                                                   "label_efficiency": summary}, indent=2))
    metrics = {f"{model}/{pipe.metric}@{row['label_fraction']:g}": row[f"{model}_mean"]
               for row in summary for model in models}
    return {"metrics": metrics, "stages": results, "label_efficiency": summary}


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
