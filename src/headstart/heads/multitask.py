"""Multi-task learning with hard parameter sharing: one backbone, one head per task.

``task.tasks.<name>.head`` is any downstream head's config (a ``task`` group option, composed there in
the experiment's defaults) and ``task.tasks.<name>.weight`` its loss weight; the task's data is
``data.tasks.<name>`` (:mod:`headstart.data.multitask`). Every head is built on the same backbone
network, so the checkpoint, the export and the hand-off hold one backbone. Each head keeps its own
loss and metrics (:meth:`~headstart.heads.supervised.SupervisedHead.step`): a training step sums the
weighted losses of the tasks' batches, and validation and test log each task's metrics as
``val/<task>/<metric>`` and the weighted sum of the task losses as ``val/loss``. The export is one
per task, ``export/<task>/``: the backbone with that task's head, as a single-task run's export.

The heads' own ``optimizer``/``scheduler`` settings are not used: ``task.optimizer`` and
``task.scheduler`` train the whole model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from headstart.errors import ConfigError
from headstart.heads.supervised import SupervisedHead
from headstart.module import HeadstartModule


class SharedBackbone:
    """A backbone spec whose ``build`` hands every head the same network (hard parameter sharing);
    everything else (``hidden_size``, ``config``, ...) is the spec's."""

    def __init__(self, spec, network: nn.Module) -> None:
        self._spec, self._network = spec, network

    def build(self, head: str = "base") -> nn.Module:
        if head != "base":
            raise ConfigError(f"A multi-task head asked for the transformers head {head!r}; heads of a multi-task "
                              "model share the bare backbone and bring their own layers on top.")
        return self._network

    def __getattr__(self, name: str):
        return getattr(self._spec, name)


def _instantiated(node):
    """``_recursive_: false`` leaves the optimizer and scheduler as configs; turn them into partials."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    return instantiate(node) if isinstance(node, (DictConfig, dict)) else node


class MultiTaskModel(HeadstartModule):
    exports_head = True

    def __init__(self, backbone, optimizer, tasks: dict[str, Any], task_kwargs: dict[str, dict[str, Any]],
                 scheduler=None, monitor: str | None = None, monitor_mode: str | None = None) -> None:
        from hydra.utils import instantiate

        if not tasks:
            raise ConfigError("task.tasks is empty: a multi-task model needs a head per task, e.g. "
                              "`- /task/sequence_classification@task.tasks.topics.head` in the experiment's defaults.")
        if set(tasks) != set(task_kwargs):
            raise ConfigError(f"The multi-task heads (task.tasks: {sorted(tasks)}) and data (data.tasks: "
                              f"{sorted(task_kwargs)}) must name the same tasks; add or rename the missing ones.")
        super().__init__(backbone, _instantiated(optimizer), _instantiated(scheduler), monitor, monitor_mode)
        shared = SharedBackbone(backbone, self.net)
        self.task_names = list(task_kwargs)  # the data's order: the order of the evaluation loaders
        self.loss_weights: dict[str, float] = {}
        self.heads = nn.ModuleDict()
        for name in self.task_names:
            entry = tasks[name]
            weight = float(entry.get("weight", 1.0))
            if weight < 0:
                raise ConfigError(f"task.tasks.{name}.weight={weight} must be zero or positive: it scales the task's loss.")
            if entry.get("head") is None:
                raise ConfigError(f"task.tasks.{name}.head is missing: compose a head config there, e.g. "
                                  f"`- /task/sequence_classification@task.tasks.{name}.head`.")
            head = instantiate(entry["head"], backbone=shared, optimizer=self.optimizer_factory, scheduler=None,
                               **task_kwargs[name], _convert_="all")
            if not isinstance(head, SupervisedHead):
                raise ConfigError(f"task.tasks.{name}.head is a {type(head).__name__}; a multi-task model takes "
                                  "downstream heads (classification, token classification, regression, QA).")
            # The backbone is registered once, here: the heads keep a plain reference to it.
            object.__setattr__(head, "net", head._modules.pop("net"))
            self.heads[name] = head
            self.loss_weights[name] = weight
        self.eval_losses = nn.ModuleDict({name: MeanMetric() for name in self.task_names})

    def export(self, directory: str, processor, metadata: dict[str, Any]) -> None:
        """One export per task, ``<directory>/<task>``: the shared backbone with the task's head, with the
        task's own parts of the run's config, data and metrics."""
        for name, head in self.heads.items():
            head.export(str(Path(directory) / name), processor, _task_metadata(metadata, name, self.loss_weights))

    def build_collator(self, processor) -> dict[str, Any]:
        return {name: head.build_collator(processor) for name, head in self.heads.items()}

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int):
        total, values, size = 0.0, {}, 0
        for name, task_batch in batch.items():
            if task_batch is None:  # data.mode=max_size: this task's loader has finished
                continue
            loss, _, _, n = self.heads[name].step(task_batch)
            total = total + self.loss_weights[name] * loss
            values[f"{name}/loss"], size = loss.detach(), size + n
        self.log_split("train", {"loss": total, **values}, batch_size=max(size, 1), prog_bar=False)
        return total

    # -- evaluation: the tasks' loaders run one after another -------------------------------------
    def _eval_step(self, batch, split: str, dataloader_idx: int) -> None:
        name = self.trainer.datamodule.eval_tasks("validation" if split == "val" else split)[dataloader_idx]
        head = self.heads[name]
        loss, predictions, targets, size = head.step(batch)
        self.eval_losses[name].update(loss.detach(), size)
        (head.val_metrics if split == "val" else head.test_metrics).update(predictions, targets)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        self._eval_step(batch, "test", dataloader_idx)

    def _log_eval(self, split: str) -> None:
        values: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=self.device)
        for name, head in self.heads.items():
            losses = self.eval_losses[name]
            if losses.update_count == 0:  # no data of this task in this split
                continue
            metrics = head.val_metrics if split == "val" else head.test_metrics
            for key, value in head.metric_values(metrics.compute()).items():
                values[f"{split}/{name}/{key.split('/', 1)[1]}"] = value
            metrics.reset()
            loss = losses.compute()
            losses.reset()
            values[f"{split}/{name}/loss"] = loss
            total = total + self.loss_weights[name] * loss
        self.log_dict(values, sync_dist=True, add_dataloader_idx=False)
        self.log(f"{split}/loss", total, sync_dist=True, add_dataloader_idx=False, prog_bar=split == "val")

    def on_validation_epoch_end(self):
        self._log_eval("val")

    def on_test_epoch_end(self):
        self._log_eval("test")


# Where a task's part of each metadata entry lies (the run's task and data config, the data module's
# task kwargs and data summary).
_TASK_SECTIONS = {"task_config": ("tasks", "{}", "head"), "data_config": ("tasks", "{}"),
                  "task_kwargs": ("task_kwargs", "{}"), "data": ("tasks", "{}")}


def _task_metadata(metadata: dict[str, Any], name: str, weights: dict[str, float]) -> dict[str, Any]:
    """The export metadata of task ``name``: its own sections of the run's, and its metrics
    (``val/<name>/acc`` as ``val/acc``)."""
    task = {**metadata, "task_name": name, "multitask": {"tasks": list(weights), "loss_weights": weights}}
    for key, path in _TASK_SECTIONS.items():
        if key in metadata:
            value = metadata[key]
            for step in path:
                value = value.get(step.format(name)) if isinstance(value, dict) else None
            task[key] = value
    if "metrics" in metadata:
        parts = (key.split("/", 2) for key in metadata["metrics"])
        task["metrics"] = {f"{split}/{metric}": metadata["metrics"][f"{split}/{owner}/{metric}"]
                           for split, owner, metric in (p for p in parts if len(p) == 3) if owner == name}
    return task
