"""Feature export: a backbone's feature vector of every example of a data set, written to disk for use
elsewhere (scikit-learn, another framework). Nothing trains; the stage runs Lightning's predict loop
over each split in order and writes ``<run dir>/features/<split>.safetensors`` with ``features``
(N x hidden, float32) and, for labelled data, ``labels``, plus ``features/features.json`` (source,
pooling, shapes, label names). The backbone comes from ``model.init_from`` (an export or run) or
``model.name_or_path``; a random one is refused, since its features mean nothing.

Image features are the backbone's (ViT's CLS, a CNN's pooled map); text features pool the token
states (``task.pooling``: mean, cls or last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from headstart.backbones.pooling import check_pooling, pool
from headstart.backbones.text import encoder_inputs
from headstart.config.schema import FeatureExportConfig
from headstart.errors import ConfigError
from headstart.module import HeadstartModule

FEATURES_DIR = "features"


class FeatureExtractor(HeadstartModule):
    trains = False

    def __init__(self, backbone, optimizer=None, scheduler=None, pooling: str = FeatureExportConfig.pooling,
                 splits: list[str] | None = None, num_labels: int | None = None,
                 label_names: list[str] | None = None, **kwargs) -> None:
        check_pooling(pooling)
        if backbone.init_from is None and backbone.name_or_path is None:
            raise ConfigError(
                "task=feature_export needs a trained backbone: set model.init_from=<pretrain run or export dir> "
                "(or model.name_or_path=<HF model dir>); a randomly initialised one has meaningless features."
            )
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.pooling = pooling
        self.splits = list(splits) if splits else None
        self.label_names = label_names
        self.image_features = getattr(backbone, "features", None)  # vision backbones say how
        self.source = backbone.init_from or backbone.name_or_path

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, hidden) features of a batch."""
        if "pixel_values" in batch:
            return self.image_features(self.backbone(pixel_values=batch["pixel_values"]))
        inputs = encoder_inputs(batch)
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        return pool(self.backbone(**inputs).last_hidden_state, mask, self.pooling)

    def predict_step(self, batch, batch_idx):
        out = {"features": self.embed(batch).float().cpu()}
        labels = batch.get("labels")
        if labels is not None and labels.dim() == 1:  # one label per example (not per token)
            out["labels"] = labels.cpu()
        return out

    def extract(self, trainer, datamodule, output_dir: Path) -> dict[str, Any]:
        """Write the features of every split; return what was written."""
        from safetensors.torch import save_file

        if trainer.world_size > 1:
            raise ConfigError("Feature export runs on one process (its output keeps the data's order); set "
                              "trainer.devices=1 and trainer.num_nodes=1.")
        splits = self.splits or datamodule.splits
        unknown = [s for s in splits if s not in datamodule.splits]
        if unknown:
            raise ConfigError(f"task.splits={splits} names {unknown}, which this data does not have; it has "
                              f"{datamodule.splits}.")
        target = Path(output_dir) / FEATURES_DIR
        target.mkdir(parents=True, exist_ok=True)
        written = {}
        for split in splits:
            batches = trainer.predict(self, dataloaders=datamodule.eval_loader(split))
            tensors = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / f"{split}.safetensors"))
            written[split] = {k: list(v.shape) for k, v in tensors.items()}
        (target / "features.json").write_text(json.dumps({
            "source": self.source, "pooling": self.pooling, "splits": written,
            "label_names": self.label_names,
        }, indent=2))
        return {"features_dir": str(target.resolve()), "splits": written}
