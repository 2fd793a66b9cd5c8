"""Several labelled data sets, one per task of a multi-task model, served together.

Each task's data is an ordinary data module (``data.tasks.<name>``: any ``data`` group option). They
share one tokenizer: the first task's (from the checkpoint, ``data.tokenizer`` or trained on its
training split) is handed to the others, so one backbone reads every task's inputs the same way.

Training batches come from Lightning's ``CombinedLoader``: with the default ``max_size_cycle`` every
step holds a batch of every task (a dict ``{task: batch}``), an epoch lasts as long as the longest
task's loader, and shorter loaders start over. ``min_size`` stops at the shortest; ``max_size`` runs
to the longest, with finished tasks missing (None) from the later steps. Validation and test run the
tasks one after another (``sequential``): the step's ``dataloader_idx`` is the index of the task in
:meth:`MultiTaskDataModule.eval_tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from headstart.config.schema import MultiTaskDataConfig
from headstart.errors import ConfigError, HeadstartError

TRAIN_MODES = ("max_size_cycle", "min_size", "max_size")


class MultiTaskDataModule(pl.LightningDataModule):
    def __init__(self, tasks: dict[str, Any], mode: str = MultiTaskDataConfig.mode,
                 num_workers: int | None = MultiTaskDataConfig.num_workers) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("data.tasks is empty: a multi-task run needs one data config per task, e.g. "
                              "`- /data/pydoc_topics_cls@data.tasks.topics` in the experiment's defaults.")
        if mode not in TRAIN_MODES:
            raise ConfigError(f"data.mode={mode!r} is unknown; use one of {', '.join(TRAIN_MODES)} "
                              "(how the tasks' training loaders are combined into steps).")
        self.tasks = dict(tasks)
        self.mode = mode
        if num_workers is not None:
            for data in self.tasks.values():
                data.num_workers = num_workers

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    @property
    def first(self):
        return next(iter(self.tasks.values()))

    def prepare(self, tokenizer_source: str | None = None) -> None:
        """Prepare every task's data with one tokenizer: the first task's."""
        for name, data in self.tasks.items():
            try:
                data.prepare(tokenizer_source)
            except HeadstartError as error:  # say which task's data it was
                raise type(error)(f"In data.tasks.{name}: {error}") from None
            if tokenizer_source is None:
                tokenizer_source = getattr(data.processor, "name_or_path", None)

    @property
    def processor(self):
        return self.first.processor

    def save_processor(self, output_dir: Path) -> None:
        self.first.save_processor(output_dir)

    def task_kwargs(self) -> dict[str, Any]:
        """What each task's head needs from its data (``num_labels``, target scaling, ...)."""
        return {"task_kwargs": {name: data.task_kwargs() for name, data in self.tasks.items()}}

    def set_collator(self, collators: dict[str, Any]) -> None:
        for name, data in self.tasks.items():
            data.set_collator(collators[name])

    def eval_tasks(self, split: str) -> list[str]:
        """The tasks with a ``split`` split, in the order their evaluation loaders run."""
        return [name for name, data in self.tasks.items() if split in data.splits]

    @property
    def has_test(self) -> bool:
        return bool(self.eval_tasks("test"))

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        return CombinedLoader({name: data.train_dataloader() for name, data in self.tasks.items()}, self.mode)

    def _eval_loaders(self, split: str):
        from lightning.pytorch.utilities import CombinedLoader

        return CombinedLoader({name: self.tasks[name].eval_loader(split) for name in self.eval_tasks(split)},
                              "sequential")

    def val_dataloader(self):
        return self._eval_loaders("validation")

    def test_dataloader(self):
        return self._eval_loaders("test")
