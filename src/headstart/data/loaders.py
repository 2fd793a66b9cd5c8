"""The DataLoaders every data module serves: one per split of ``self.datasets``."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from headstart.data.resumable import EpochShuffleSampler, ResumableDataLoader

log = logging.getLogger(__name__)


class SplitLoaders:
    """Mixed into a LightningDataModule that sets ``datasets`` (split -> dataset), ``batch_size``,
    ``eval_batch_size``, ``collator`` and ``num_workers``."""

    #: Drop the last, smaller training batch (when more than one batch remains).
    drop_last_train = False
    #: Draw training batches of similar lengths (less padding for line-by-line text).
    bucket_by_length = False

    def _loader(self, split: str, train: bool) -> DataLoader:
        if self.datasets is None:
            raise RuntimeError("call prepare() before asking for data loaders")
        dataset = self.datasets[split]
        if train and len(dataset) < self.batch_size:
            log.warning("data.batch_size=%d is larger than the %d training examples: every epoch is a single "
                        "batch of %d (one optimizer step). Lower data.batch_size for more steps per epoch.",
                        self.batch_size, len(dataset), len(dataset))
        sampler = self._length_grouped_sampler(dataset) if train and self.bucket_by_length else None
        # One process: shuffle=True's order, which a resumed run continues mid-epoch. Several: Lightning
        # puts in its DistributedSampler (a resumed run starts its epoch over).
        trainer = getattr(self, "trainer", None)
        resumable = train and sampler is None and (trainer is None or trainer.world_size == 1)
        if resumable:
            sampler = EpochShuffleSampler(len(dataset))
        loader = (ResumableDataLoader if resumable else DataLoader)(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and self.drop_last_train and len(dataset) > self.batch_size,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        if resumable:
            if trainer is not None:
                loader.batches_trained = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if getattr(self, "_resume_position", None):
                loader.resume_at(self._resume_position)
                self._resume_position = None
            self._train_loader = loader
        return loader

    # The training loader's place, saved in checkpoints and restored (before the loader is built) by
    # Lightning, so that a run resumed mid-epoch goes on with the very next batch.
    def state_dict(self) -> dict:
        loader = getattr(self, "_train_loader", None)
        return {"train_position": loader.position()} if loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._resume_position = state.get("train_position")

    def _length_grouped_sampler(self, dataset):
        """transformers' sampler for ``group_by_length``: shuffled, then sorted by length within
        chunks of 50 batches, so a batch pads to a length close to all of its examples'."""
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = [len(ids) for ids in dataset.with_format(None)["input_ids"]]
        return LengthGroupedSampler(self.batch_size, lengths=lengths)

    def eval_loader(self, split: str) -> DataLoader:
        """The examples of ``split`` in their order, in evaluation batches (no shuffling, none dropped)."""
        return self._loader(split, train=False)

    @property
    def splits(self) -> list[str]:
        return list(self.datasets or {})

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    @property
    def has_test(self) -> bool:
        return self.datasets is not None and "test" in self.datasets
