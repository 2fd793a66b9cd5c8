"""The pretrain -> finetune pipeline: each stage is an ordinary run composed from its own experiment,
in a subdirectory of the pipeline's run directory, with the hand-off wired between them."""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from headstart.config.checks import RULES, check_values
from headstart.data import overlap
from headstart.errors import ConfigError
from headstart.pipeline import report as results_report
from headstart.pipeline.stage import StageResult, run_stage

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
    from omegaconf.errors import InterpolationToMissingValueError

    try:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except InterpolationToMissingValueError as err:  # a stage override refers to a value the user must give
        missing = str(err).split("Missing mandatory value: ")[-1].splitlines()[0]
        raise ConfigError(f"{missing} has no value (???), and {err.full_key} needs it. Set it on the command line: "
                          f"{missing}=... (see the experiment file's header for an example).") from None


def shared_overrides(task_overrides: list[str]) -> list[str]:
    """The command-line overrides that apply to every stage."""
    shared = []
    for override in task_overrides:
        key = override_key(override)
        if key == "experiment" or key.startswith("pipeline") or key.startswith("hparams_search"):
            continue
        if any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in _STAGE_ONLY):
            value = override.split("=", 1)[1] if "=" in override else ""
            raise ConfigError(
                f"The override {override!r} would apply to every pipeline stage, but {key.split('.')[0]} differs "
                f"between stages. Give it to one stage, in its list of overrides (added to the experiment's own): "
                f"'pipeline.pretrain.overrides=[\"{key}={value}\"]' or "
                f"'pipeline.finetune.overrides=[\"{key}={value}\"]'."
            )
        shared.append(override)
    return shared


def override_key(override: str) -> str:
    """``+data.batch_size=8`` -> ``data.batch_size``."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: list[str], added: list[str]) -> list[str]:
    """``base`` with ``added`` after it; an added override of a key that ``base`` sets replaces that
    entry, and a bare ``~key`` removes it (elsewhere ``~key`` is Hydra's deletion of a config key)."""
    base_keys = {override_key(o) for o in base}
    removed = {override_key(o) for o in added if o.startswith("~") and "=" not in o} & base_keys
    replaced = {override_key(o) for o in added}
    return [o for o in base if override_key(o) not in replaced] + [o for o in added if override_key(o) not in removed]


def _command_line_stage_overrides(stage: str, task_overrides: list[str]) -> tuple[list[str], list[str]]:
    """What the command line gives ``pipeline.<stage>.overrides``, as stage overrides: from the list
    (or dict) form ``pipeline.finetune.overrides=[...]`` and from the key form
    ``+pipeline.finetune.overrides.data=text_files`` (kept as written, so a group choice and its keys,
    ``...overrides.data=text_files`` and ``...overrides.data.train_files=[a]``, both count). Returns
    (stage overrides, the command-line entries they came from)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    prefix = f"pipeline.{stage}.overrides"
    parser = OverridesParser.create()
    found, entries = [], []
    for override in task_overrides:
        key = override_key(override)
        if key == prefix:
            entries.append(override)
            if not override.startswith("~"):
                found.extend(flatten_overrides(parser.parse_override(override).value()))
        elif key.startswith(prefix + "."):
            entries.append(override)
            found.append(key[len(prefix) + 1:] + "=" + override.split("=", 1)[1])
    return found, entries


def stage_overrides(cfg: DictConfig, stage: str, task_overrides: list[str], config_name: str) -> list[str]:
    """``pipeline.<stage>.overrides`` as the experiment sets them, with the command line's added
    (``merge_overrides``), not replacing them."""
    node = cfg.pipeline.get(stage) or {}
    from_command_line, entries = _command_line_stage_overrides(stage, task_overrides)
    if not entries:
        return flatten_overrides(_container(node.get("overrides")))
    # The experiment's own: the config composed without the command line's entries for this stage.
    rest = [o for o in task_overrides if o not in entries]
    own = flatten_overrides(_container((compose_stage(config_name, rest).pipeline.get(stage) or {}).get("overrides")))
    return merge_overrides(own, from_command_line)


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose
    from hydra.errors import HydraException

    try:
        return compose(config_name=config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(f"A pipeline stage could not be composed from {overrides}: {err}") from None


_PRETRAIN_KEYS = ("experiment", "overrides", "from")


def _reused_pretraining(pipe: DictConfig) -> dict[str, Any] | None:
    """``pipeline.pretrain.from``: a finished pretraining to fine-tune from instead of pretraining again."""
    from headstart.transfer.export import read_metadata
    from headstart.transfer.handoff import resolve_export_dir

    unknown = sorted(set(pipe.pretrain) - set(_PRETRAIN_KEYS))
    if unknown:
        raise ConfigError(f"pipeline.pretrain has no key {unknown[0]!r}; its keys are {list(_PRETRAIN_KEYS)} "
                          "(from: a pretrain run, pipeline or export directory to reuse instead of pretraining).")
    source = pipe.pretrain.get("from")
    if not source:
        return None
    export_dir = resolve_export_dir(str(source), "pipeline.pretrain.from")
    return {"reused_from": str(Path(source).resolve()), "export_dir": str(export_dir.resolve()),
            "export_metadata": read_metadata(export_dir), "metrics": {}}


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain once (or reuse ``pipeline.pretrain.from``), then fine-tune from the export and (the
    baseline) from scratch: once, or at each amount of labels x ``pipeline.seeds`` with a
    label-efficiency report."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.resume not in (None, "auto"):
        raise ConfigError(f"resume={cfg.resume!r} names one run, but a pipeline runs several. Use resume=auto with "
                          "hydra.run.dir=<the pipeline's directory>: each stage goes on in its own subdirectory.")
    hydra_cfg = HydraConfig.get()
    out = Path(cfg.paths.output_dir)
    group = cfg.run_group or f"{cfg.task_name}-{out.name}"
    task_overrides = list(hydra_cfg.overrides.task)
    shared = shared_overrides(task_overrides)
    config_name = hydra_cfg.job.config_name
    pipe = cfg.pipeline
    amounts = label_amounts(pipe.label_fractions, pipe.label_counts)  # checked before anything trains
    check_seeds(pipe.seeds)
    if not amounts and pipe.seeds:  # several seeds at all the labels: the same report, one row
        amounts = label_amounts(None, ["all"])
    reused = _reused_pretraining(pipe)
    pretrain_overrides = stage_overrides(cfg, "pretrain", task_overrides, config_name)
    finetune_overrides = [f"experiment={pipe.finetune.experiment}",
                          *stage_overrides(cfg, "finetune", task_overrides, config_name),
                          f"model.init_from={quote(reused['export_dir'] if reused else str(out / 'pretrain'))}"]
    models = {"finetune": finetune_overrides}
    if pipe.scratch_baseline:
        # Same architecture and tokenizer as the fine-tuned model, random initial weights, its own settings.
        # The fine-tuned model's transfer settings (frozen parts, layer-wise rates) do not apply to it.
        untransferred = [o for o in finetune_overrides if not override_key(o).startswith("transfer")]
        models["scratch"] = merge_overrides(untransferred, [
            *stage_overrides(cfg, "scratch", task_overrides, config_name), "transfer=scratch"])
    grids = search_grids(pipe, models)  # checked before anything trains
    if hydra_cfg.runtime.choices.get("debug"):  # a check that the pipeline runs: one run of each stage
        amounts, grids = amounts[:1], {model: grid[:1] for model, grid in grids.items()}
        pipe.seeds = list(pipe.seeds)[:1] if pipe.seeds else None
        log.info("debug=%s: the first amount of labels, seed and setting only", hydra_cfg.runtime.choices.debug)

    def stage_config(name: str, overrides: list[str], last: list[str] = ()) -> DictConfig:
        return compose_stage(config_name, [
            *overrides, *shared, *last, f"paths.output_dir={quote(str(out / name))}",
            f"run_group={quote(group)}", f"run_name={quote(group + '-' + name.replace('/', '-'))}",
            f"run_job_type={name.split('/')[0]}", f"run_tags=[{quote(cfg.task_name)}]",
        ])

    def run(name: str, overrides: list[str], last: list[str] = ()) -> StageResult:
        stage_cfg = stage_config(name, overrides, last)
        log.info("Pipeline stage %s: %s", name, " ".join([*overrides, *last]))
        return run_stage(stage_cfg)

    # Every stage's values checked before the first one trains (a bad fine-tuning setting found after
    # an hour of pretraining is an hour lost): each model's first run, as _label_efficiency composes it.
    first = [*amounts[0]["overrides"], f"seed={(pipe.seeds or [cfg.seed])[0]}"] if amounts else []
    stages = {} if reused else {"pretrain": ([f"experiment={pipe.pretrain.experiment}", *pretrain_overrides], [])}
    stages.update({model: (overrides, [*first, *(f"{k}={quote(v)}" for k, v in (grids[model] or [{}])[0].items())])
                   for model, overrides in models.items()})
    checked_data = []  # the scratch baseline reads the fine-tuning data unless its overrides change it
    for name, (overrides, last) in stages.items():
        stage_cfg = stage_config(name, overrides, last)
        check_values(stage_cfg, f" (pipeline stage {name})")
        if name != "pretrain" and stage_cfg.data not in checked_data:  # rows, labels, rows shared between splits
            check_data(stage_cfg)
            checked_data.append(stage_cfg.data)
        log.info("Pipeline stage %s trains for at most %s (each run); its expected time is logged once its first "
                 "steps are timed", name, _budget_words(stage_cfg.trainer))

    if reused:
        log.info("Pipeline stage pretrain: reusing %s (pipeline.pretrain.from)", reused["export_dir"])
        results = {"pretrain": reused}
    else:
        results = {"pretrain": run("pretrain", [f"experiment={pipe.pretrain.experiment}", *pretrain_overrides]).record}
    if amounts:
        return _label_efficiency(cfg, run, models, grids, amounts, results, out, group)
    for name, overrides in models.items():
        results[name] = select_on_validation(run, name, overrides, [], grids[name])
    summary = compare(results, pipe.metric)
    context = results_report.pipeline_context(results, pipe.metric)
    (out / "pipeline.json").write_text(json.dumps({"metric": pipe.metric, "stages": results, "comparison": summary,
                                                   "report": _report_record(context, results)},
                                                  indent=2))
    print_comparison(summary, pipe.metric, out, context)
    return {"metrics": {f"{stage}/{pipe.metric}": row["value"] for stage, row in summary.items()}, "stages": results}


def _budget_words(trainer_cfg) -> str:
    """"3000 optimizer steps or 10 epochs, whichever comes first"."""
    steps = trainer_cfg.get("max_steps")
    epochs = trainer_cfg.get("max_epochs")
    parts = [f"{steps} optimizer steps" if steps not in (None, -1) else None,
             f"{epochs} epochs" if epochs not in (None, -1) else None,
             f"{trainer_cfg.get('max_time')} (max_time)" if trainer_cfg.get("max_time") else None]
    parts = [p for p in parts if p]
    return " or ".join(parts) + (", whichever comes first" if len(parts) > 1 else "") if parts else "no set budget"


def check_data(stage_cfg: DictConfig) -> None:
    """A stage's data files read and checked as the stage will read them (``read_splits``: rows,
    labels, rows shared between splits and the test left after dropping them), without tokenizing:
    a data error stops the pipeline before its first stage trains."""
    from hydra.utils import instantiate

    datamodule = instantiate(stage_cfg.data)
    if hasattr(datamodule, "read_splits"):
        datamodule.read_splits()


def check_seeds(seeds) -> None:
    """``pipeline.seeds``, each a seed ``seed=`` takes (only the first is in the stage configs checked
    before the first stage trains; a bad later one would end the pipeline in a traceback hours in)."""
    bad = [s for s in seeds or [] if not RULES["seed"].allows(s)]
    if bad:
        raise ConfigError(f"pipeline.seeds={list(seeds)} has {bad}: each seed must be {RULES['seed'].describe()}, "
                          "e.g. pipeline.seeds=[0,1,2].")


def label_amounts(fractions, counts) -> list[dict[str, Any]]:
    """Each amount of labels a label-efficiency pipeline fine-tunes with: its name (for run
    directories), its label (for tables) and the data overrides that select it."""
    amounts = []
    fractions = [float(f) for f in fractions or []]
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"pipeline.label_fractions={fractions} has {bad}, outside (0, 1]: each is the share of the "
                          "training labels a fine-tuning run keeps, e.g. [0.01,0.05,0.1,1.0].")
    for f in fractions:
        amounts.append({"name": f"labels{f:g}", "label": f"{f * 100:g}%", "label_fraction": f, "label_count": None,
                        "overrides": [f"data.label_fraction={f!r}"]})
    for c in counts or []:
        if isinstance(c, str) and c.lower() == "all" or c is None:
            amounts.append({"name": "labels-all", "label": "all", "label_fraction": 1.0, "label_count": None,
                            "overrides": []})
        elif isinstance(c, int) and not isinstance(c, bool) and c > 0:
            amounts.append({"name": f"labels-n{c}", "label": str(c), "label_fraction": None, "label_count": c,
                            "overrides": [f"data.label_count={c}"]})
        else:
            raise ConfigError(f"pipeline.label_counts={list(counts)} has {c!r}: each entry is a positive number of "
                              "labelled training examples, or all, e.g. [100,300,1000,all].")
    return amounts


def _label_efficiency(cfg: DictConfig, run, models: dict[str, list[str]], grids: dict[str, list[dict[str, Any]]],
                      amounts: list[dict[str, Any]], results: dict[str, Any], out: Path, group: str) -> dict[str, Any]:
    """Each model at each amount of labels and seed (the last overrides, so they win over the command
    line's), its learning rate (and the stage's ``search`` settings) chosen on validation; then the
    label-efficiency report."""
    from headstart.pipeline import label_efficiency

    pipe = cfg.pipeline
    seeds = [int(s) for s in pipe.seeds] if pipe.seeds else [int(cfg.seed)]
    runs = []
    progress = _Progress(sum(len(grids[m]) or 1 for m in models) * len(amounts) * len(seeds))
    for amount in amounts:
        for seed in seeds:
            for model, overrides in models.items():
                name = f"{model}/{amount['name']}-seed{seed}"
                results[name] = select_on_validation(run, name, overrides, [*amount["overrides"], f"seed={seed}"],
                                                     grids[model])
                progress.done(len(grids[model]) or 1)
                metrics = compare({model: results[name]}, pipe.metric)[model]
                runs.append({"labels": amount["label"], "label_fraction": amount["label_fraction"],
                             "label_count": amount["label_count"], "train_examples": results[name].get("train_examples"),
                             "seed": seed, "model": model,
                             "learning_rate": results[name].get("selected", {}).get("task.optimizer.lr"),
                             "metric": pipe.metric, "value": metrics["value"],
                             "test_examples": results[name].get("test_examples"),
                             "baseline": results_report.baseline_value(results[name], pipe.metric),
                             "output_dir": metrics["output_dir"],
                             "test_outputs": (results[name].get("test_outputs") or {}).get("file")})
    context = results_report.pipeline_context(results, pipe.metric)
    summary = label_efficiency.report(cfg, runs, pipe.metric, out, group, context)
    record = _report_record(context, results, seeds=seeds,
                            figures=[label_efficiency.PLOT_NAME, label_efficiency.PLOT_PDF_NAME])
    (out / "pipeline.json").write_text(json.dumps({"metric": pipe.metric, "stages": results, "runs": runs,
                                                   "label_efficiency": summary, "report": record}, indent=2))
    metrics = {f"{model}/{pipe.metric}@{row['labels']}": row[f"{model}_mean"] for row in summary for model in models}
    return {"metrics": metrics, "stages": results, "label_efficiency": summary}


class _Progress:
    """How far the downstream runs are, and the time the rest should take at the pace so far."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.started = total, 0, time.perf_counter()
        log.info("Downstream: %d training runs (every amount of labels, seed, model and setting to choose among)",
                 total)

    def done(self, runs: int) -> None:
        self.finished += runs
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.finished * (self.total - self.finished)
        log.info("Downstream runs: %d of %d done in %.1f min; about %.1f min to go at this pace", self.finished,
                 self.total, elapsed / 60, left / 60)


def search_grids(pipe: DictConfig, models: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Per downstream model, the settings to choose from on validation: every combination of
    ``pipeline.learning_rates`` (both models) and the model's stage ``search``, sweeps written as on
    Hydra's command line (``pipeline.finetune.search=["transfer.layer_lr_decay=0.1,0.3"]``); empty:
    one run as configured."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    rates = [float(v) for v in pipe.learning_rates or []]
    if any(r <= 0 for r in rates):
        raise ConfigError(f"pipeline.learning_rates={rates} must hold positive learning rates, e.g. [3e-3,1e-2,3e-2], "
                          "or be null to train each model once at its task.optimizer.lr.")
    parser = OverridesParser.create()
    grids = {}
    for model in models:
        grid: dict[str, list[Any]] = {"task.optimizer.lr": rates} if rates else {}
        for entry in (pipe.get(model) or {}).get("search") or []:
            try:
                override = parser.parse_override(str(entry))
            except HydraException as err:
                raise ConfigError(f"pipeline.{model}.search has {entry!r}, which is not key=value1,value2,... "
                                  f"({err}). E.g. 'pipeline.{model}.search=[\"transfer.layer_lr_decay=0.1,0.3\"]'.") from None
            value = override.value()
            grid[override.key_or_group] = list(value.list) if override.is_sweep_override() else [value]
        grids[model] = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] \
            if grid else []
    return grids


def candidate_name(settings: dict[str, Any]) -> str:
    """``{task.optimizer.lr: 0.01, transfer.layer_lr_decay: 0.1}`` -> ``lr0.01-layer_lr_decay0.1``."""
    return "-".join(f"{key.rsplit('.', 1)[-1]}{value:g}" if isinstance(value, (int, float)) else
                    f"{key.rsplit('.', 1)[-1]}{value}" for key, value in settings.items())


def select_on_validation(run, name: str, overrides: list[str], last: list[str],
                         grid: list[dict[str, Any]]) -> dict[str, Any]:
    """One run of ``name``, or one per setting of ``grid`` (``name/<setting>``, e.g. ``name/lr0.01``)
    and the one whose best checkpoint scored best on validation (its task's monitor; ties to the
    first): the test split never chooses. Returns the chosen run's results.json record, with
    ``selected`` (the chosen settings) and every candidate's validation score."""
    if not grid:
        return run(name, overrides, last).record
    candidates = {}
    for settings in grid:
        candidates[candidate_name(settings)] = settings, run(
            f"{name}/{candidate_name(settings)}", overrides, [*last, *(f"{k}={quote(v)}" for k, v in settings.items())])
    scores = {key: _validation_score(result) for key, (_, result) in candidates.items()}
    maximize = next(iter(candidates.values()))[1].monitor_mode == "max"
    best = (max if maximize else min)(scores, key=lambda key: scores[key])  # the first of equal scores
    log.info("%s: %s chosen on validation (%s)", name, best, ", ".join(f"{k}: {v:.4f}" for k, v in scores.items()))
    settings, result = candidates[best]
    return {**result.record, "selected": settings, "validation_by_candidate": scores}


def _validation_score(result: StageResult) -> float:
    monitor = result.monitor
    if monitor not in result.metrics:
        raise ConfigError(f"pipeline.learning_rates (and search) choose by the task's monitor on validation, but the run "
                          f"{result.output_dir} logged no {monitor!r} (it logged {sorted(result.metrics)}). "
                          "Give the data a validation split, or set pipeline.learning_rates=null.")
    return result.metrics[monitor]


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


def _report_record(context: dict[str, Any], results: dict[str, Any], seeds: list[int] | None = None,
                   figures: list[str] = ()) -> dict[str, Any]:
    """pipeline.json's ``report``: what the table and figure say beside the numbers (metric in words,
    spread, seeds, test split, baseline and its score, checkpoints, setup) and the files they are in."""
    scores = {results_report.baseline_value(r, context["metric"]) for name, r in results.items() if name != "pretrain"}
    baseline = {**context["baseline"], "values": sorted(scores - {None})} if context["baseline"] else None
    return {**context, "baseline": baseline, "seeds": seeds, "n": len(seeds) if seeds else 1,
            "table": results_report.TABLE_NAME, "figures": list(figures)}


def print_comparison(summary: dict[str, dict[str, Any]], metric: str, out: Path,
                     context: dict[str, Any] | None = None) -> None:
    """The pipeline's table, printed last and written to results_table.txt: each model's value (one
    run each), their difference and the trivial baseline's score, with notes on what they are."""
    from rich.table import Table

    context = context or {"metric": metric, "metric_words": results_report.metric_words(metric)}
    table = Table(title=f"What pretraining bought: {context['metric_words']}")
    table.add_column("model")
    table.add_column(context["metric_words"], justify="right")
    table.add_column("run directory")
    labels = {"finetune": "pretrained + fine-tuned", "scratch": "from scratch"}
    for stage, row in summary.items():
        table.add_row(labels[stage], f"{row['value']:.4f}", row["output_dir"])
    if "finetune" in summary and "scratch" in summary:
        delta = summary["finetune"]["value"] - summary["scratch"]["value"]
        table.add_row("difference", f"{delta:+.4f}", "")
    baseline = context.get("baseline") or {}
    if baseline.get("value") is not None:
        table.add_row(baseline["kind"], f"{baseline['value']:.4f}", "")
    notes = [results_report.value_note(context),
             "One run of each model (pipeline.seeds=null): no spread; set pipeline.seeds=[0,1,2] for mean ± std.",
             overlap.dropped_note(context.get("split_overlap")), overlap.pairs_note(context.get("split_overlap")),
             results_report.baseline_note(context), results_report.setup_note(context),
             f"Pipeline outputs: {out.resolve()} ({results_report.TABLE_NAME}, pipeline.json)"]
    results_report.emit(table, [n for n in notes if n], out)
