"""The DataLoaders every data module serves: one per split of ``self.datasets``."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


class SplitLoaders:
    """Mixed into a LightningDataModule that sets ``datasets`` (split -> dataset), ``batch_size``,
    ``eval_batch_size``, ``collator`` and ``num_workers``."""

    #: Drop the last, smaller training batch (when more than one batch remains).
    drop_last_train = False

    def _loader(self, split: str, train: bool) -> DataLoader:
        if self.datasets is None:
            raise RuntimeError("call prepare() before asking for data loaders")
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and self.drop_last_train and len(dataset) > self.batch_size,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

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
