"""The base LightningModule of every objective and downstream head.

It owns what they share: the backbone network built from the ``model`` group, the optimizer and
schedule from ``_partial_`` configs, metric logging, and export of the backbone for hand-off.
An objective subclasses it, names the transformers head it trains (``hf_head``), and writes its
steps and its collator.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch


class HeadstartModule(pl.LightningModule):
    #: Which transformers head the network carries (see ``backbones.text.AUTO_CLASSES``).
    hf_head = "base"
    #: Pretraining objectives export their backbone at the end of training for the next stage.
    exports_backbone = False
    #: Downstream heads export the whole model (backbone and head) for their task's auto class, from the
    #: checkpoint best on validation.
    exports_head = False
    #: False for modules that only run inference (feature export): the stage calls their ``extract``.
    trains = True
    #: Set by headstart.transfer.modes.apply_transfer: submodules kept in eval mode (a linear
    #: probe's frozen backbone) and the layer-wise learning-rate decay.
    frozen_modules: tuple[torch.nn.Module, ...] = ()
    layer_lr_decay = 1.0
    #: Objectives whose training forward pass and loss (``step_forward``) compile as one graph
    #: (``fullgraph=True``, static shapes): ``speed.compile`` compiles that function, not the network alone.
    compiles_step = False
    _compiled_step = None  # compiled at the first training step after compile_for_training
    _compile_settings: dict[str, Any] | None = None
    #: The tokenizer's vocabulary size when ``speed.pad_vocab_to_multiple_of`` padded the network's
    #: vocabulary matrices (see :meth:`pad_vocab`); None: not padded.
    padded_vocab_from: int | None = None

    def __init__(self, backbone, optimizer, scheduler=None, monitor: str | None = None,
                 monitor_mode: str | None = None) -> None:
        # monitor/monitor_mode (the task config's, which the checkpoint callback reads) are only recorded
        # with the hyperparameters: their defaults live in the schema, not here.
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.progress_bar_keys: set[str] = set()
        self.net = self.build_network(backbone)

    @classmethod
    def processor_source(cls, task_cfg) -> str | None:
        """Where the data's processor (tokenizer) comes from when neither ``data.tokenizer`` nor the
        model names one; None: trained on the data. Read before the module is built, from the task's
        config (distillation: its teacher's export)."""
        return None

    # -- model FLOPs, for the throughput monitor's FLOPs/s and MFU --------------------------------
    @property
    def flops_per_batch(self) -> float | None:
        """Model FLOPs of the current training batch; None: not counted."""
        return getattr(self, "_batch_flops", None)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_flops = self.batch_flops(batch)

    def batch_flops(self, batch) -> float | None:
        """Model FLOPs of a training step on ``batch`` (see headstart.flops); text transformers are
        counted, objectives with other costs override this."""
        from headstart.flops import text_batch_flops

        return text_batch_flops(self.net, batch, self.__dict__.setdefault("_flops_cache", {}),
                                output_tokens=self.predicted_tokens(batch))

    def predicted_tokens(self, batch) -> int | None:
        """How many positions of ``batch`` the output (vocabulary) projection runs at; None: all."""
        return None

    # -- the training step's forward pass, compiled whole where the objective allows it ---------------
    @property
    def step_forward(self):
        """The training step's forward pass and loss, from a batch: what ``compiles_step`` compiles."""
        return self.forward

    def training_forward(self, batch):
        """``step_forward``, compiled when ``speed.compile`` asked for it (see :meth:`compile_for_training`)."""
        if self._compiled_step is None and self._compile_settings is not None:
            self._compiled_step = torch.compile(self.step_forward, fullgraph=True, dynamic=False,
                                                **self._compile_settings)
        return (self._compiled_step or self.step_forward)(batch)

    def compile_for_training(self, mode: str | None = None, backend: str = "inductor") -> None:
        """torch.compile the training step (``compiles_step``: forward and loss as one graph that does not
        recompile from step to step, compiled at the first step) or else the network, in place (its
        parameter names, so checkpoints and exports, stay the same). Evaluation runs the network as it is."""
        if self.compiles_step:
            # A stage's own graphs: those of an earlier stage in this process (a pipeline, a multirun) would
            # count towards the recompile limit, which fails a fullgraph step.
            torch._dynamo.reset()
            self._compile_settings, self._compiled_step = {"mode": mode, "backend": backend}, None
        else:
            self.net.compile(mode=mode, backend=backend)

    def __getstate__(self) -> dict[str, Any]:
        # A compiled function does not pickle (ddp_spawn sends the module to its processes): each
        # process compiles its own at its first step.
        return {**super().__getstate__(), "_compiled_step": None}

    def pad_vocab(self, multiple: int) -> bool:
        """Pad the network's vocabulary (input and output embedding matrices) to a multiple of ``multiple``
        rows, the shapes GPU matrix units run fastest; True if it did. The padded rows are never inputs,
        their logits are cut off (:meth:`vocab_logits`) and exports leave them out (:meth:`export`), so
        what the model computes and writes is unchanged. Only networks with a vocabulary projection."""
        if self.net.get_output_embeddings() is None:
            return False
        real = self.net.get_input_embeddings().num_embeddings
        if real % multiple == 0:
            return False
        self.net.resize_token_embeddings(real, pad_to_multiple_of=multiple, mean_resizing=False)
        self.padded_vocab_from = real
        return True

    def vocab_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` over the tokenizer's vocabulary: those of a padded vocabulary's extra rows cut off."""
        return logits if self.padded_vocab_from is None else logits[..., : self.padded_vocab_from]

    def build_network(self, backbone) -> torch.nn.Module:
        """The transformers model this module trains: the backbone with the head ``hf_head`` names."""
        return backbone.build(self.hf_head)

    # -- the backbone, as the hand-off sees it ----------------------------------------------
    @property
    def backbone(self) -> torch.nn.Module:
        """The bare encoder/decoder (e.g. ``BertModel``), without any objective or task head."""
        return self.net.base_model

    def build_collator(self, processor):
        """How examples become a batch; the default pads text to the longest sequence in the batch
        and stacks anything else."""
        if processor is None or not hasattr(processor, "pad"):
            return None  # torch's default collation; image processors' examples are ready to stack
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(processor)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode whenever the module is switched to train mode (by Lightning,
        or by a caller); ``apply_transfer`` also puts them in eval mode once, as Lightning 2.6 keeps
        each submodule's mode through fit."""
        super().train(mode)
        for module in self.frozen_modules:
            module.train(False)
        return self

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        scales = self.lr_scales()
        base_lr = self.optimizer_factory.keywords.get("lr") if scales else None
        groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                # Biases and norm weights (1-D) take no weight decay, as in BERT and HF Trainer.
                groups.setdefault((param.ndim < 2, scales.get(name, 1.0)), []).append(param)
        param_groups = []
        for (no_decay, scale), params in groups.items():
            group: dict[str, Any] = {"params": params}
            if no_decay:
                group["weight_decay"] = 0.0
            if base_lr is not None:
                group["lr"] = base_lr * scale
            param_groups.append(group)
        optimizer = self.optimizer_factory(params=param_groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer,
                                           num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (those left out: 1); layer-wise decay sets them."""
        from headstart.transfer.modes import layerwise_lr_scales

        return layerwise_lr_scales(self) if self.layer_lr_decay != 1.0 else {}

    def log_split(self, split: str, values: dict[str, Any], batch_size: int, prog_bar: bool = False) -> None:
        """Log ``{name: value}`` as ``split/name``; step-level in training, epoch means elsewhere.

        Training values for the progress bar are named in ``progress_bar_keys`` rather than logged with
        ``prog_bar``, which Lightning reads at every step (a wait for the device); headstart's bar
        reads them at logging steps (``headstart.progress``)."""
        on_step = split == "train"
        if on_step and prog_bar:
            self.progress_bar_keys.update(f"{split}/{k}_step" for k in values)
        self.log_dict({f"{split}/{k}": v for k, v in values.items()}, on_step=on_step, on_epoch=True,
                      batch_size=batch_size, prog_bar=prog_bar and not on_step, sync_dist=not on_step)

    @contextmanager
    def seeded(self, seed: int):
        """Run a block with a fixed torch seed (reproducible dropout or sampling in evaluation) and
        leave the training random state as it was."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from headstart.tracking.wandb import attached_run_id

        run_id = attached_run_id(self.loggers)
        if run_id:  # a run resumed from this checkpoint logs to the same W&B run
            checkpoint["wandb_run_id"] = run_id

    # -- export -------------------------------------------------------------------------------
    def export(self, directory: str, processor, metadata: dict[str, Any]) -> None:
        """Write the network as an HF model directory (loads with ``AutoModel.from_pretrained``),
        with the processor (tokenizer) that prepares its inputs and a model card; downstream heads
        write the whole model instead (``SupervisedHead.export``)."""
        from headstart.transfer.export import write_export

        network = self.exported_network()
        if self.padded_vocab_from is not None:  # the export has the tokenizer's vocabulary, as if never padded
            import copy

            network = copy.deepcopy(network)
            network.resize_token_embeddings(self.padded_vocab_from, mean_resizing=False)
        write_export(network, processor, directory,
                     {"objective": type(self).__name__, "export_kind": "backbone", **metadata})

    def exported_network(self) -> torch.nn.Module:
        """What the export holds; the trained network itself unless the objective converts it."""
        return self.net
