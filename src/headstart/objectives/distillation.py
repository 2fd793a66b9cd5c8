"""Knowledge distillation of a masked language model (DistilBERT, Sanh et al., 2019).

A frozen teacher MLM and the student (built from the ``model`` group with an MLM head) see the same
masked batch. At the masked positions the student learns both the teacher's softened distribution
and the true tokens:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, tokens)

(T^2 keeps the soft term's gradients on the scale of the hard term's as T changes; Hinton et al., 2015).
The teacher is loaded from ``task.teacher`` and kept out of the module's registered children: it is
not trained, not in checkpoints (they hold the student alone) and not exported; the export is the
student, which hands off like any MLM backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headstart.backbones.text import encoder_inputs
from headstart.config.schema import DistillationConfig
from headstart.errors import CheckpointError, ConfigError
from headstart.objectives.masked_lm import MaskedLanguageModeling, masked_position_logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, soft, hard) over N positions with logits (N, V) and true tokens (N,): soft is
    T^2 * KL(teacher_T || student_T) averaged over positions, hard the cross-entropy with the tokens."""
    student, teacher = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    hard = F.cross_entropy(student, target)
    return alpha * soft + (1.0 - alpha) * hard, soft, hard


def load_teacher(path: str):
    """The frozen teacher MLM (eval mode, no gradients) from an export, a run directory or an HF directory."""
    from transformers import AutoModelForMaskedLM

    from headstart.backbones.text import register_models
    from headstart.transfer.handoff import resolve_export_dir

    register_models()  # a headstart model type must be known before its config can be read
    directory = resolve_export_dir(path, "task.teacher")
    try:
        # safetensors only, as in the hand-off: pickled weights can run code.
        teacher = AutoModelForMaskedLM.from_pretrained(str(directory), use_safetensors=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"task.teacher={path!r} could not be loaded as a masked language model from {directory} "
            f"({str(err).splitlines()[0]}). Point it at a masked-LM pretrain run (experiment=text_mlm) or its "
            "export/, or at an HF directory of a masked LM saved with save_pretrained(dir, safe_serialization=True)."
        ) from None
    return teacher.eval().requires_grad_(False)


class MaskedLMDistillation(MaskedLanguageModeling):
    """Masking collator, student network, masked accuracy and perplexity as in MLM; the loss distils."""

    compiles_step = False  # the step runs a teacher too: speed.compile compiles the student network

    def __init__(self, backbone, optimizer, teacher: str, scheduler=None,
                 temperature: float = DistillationConfig.temperature, alpha: float = DistillationConfig.alpha,
                 mlm_probability: float = DistillationConfig.mlm_probability,
                 mask_replace_prob: float = DistillationConfig.mask_replace_prob,
                 random_replace_prob: float = DistillationConfig.random_replace_prob, **kwargs) -> None:
        if temperature <= 0:
            raise ConfigError(f"task.temperature={temperature} must be positive (1 leaves the teacher's "
                              "distribution as it is, higher softens it).")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"task.alpha={alpha} must lie in [0, 1]: the weight of the teacher's soft targets "
                              "(1 - alpha goes to the true tokens).")
        super().__init__(backbone, optimizer, scheduler, mlm_probability=mlm_probability,
                         mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob, **kwargs)
        self.temperature = temperature
        self.alpha = alpha
        net = load_teacher(teacher)
        teacher_vocab, student_vocab = net.config.vocab_size, self.net.config.vocab_size
        if teacher_vocab != student_vocab:
            raise CheckpointError(
                f"task.teacher={teacher!r} predicts over {teacher_vocab} tokens, the student over {student_vocab}: "
                "distillation compares their predictions token by token, so both need the teacher's tokenizer. "
                "Leave data.tokenizer unset (the teacher's is then used) and do not load the student from "
                "model.name_or_path/model.init_from with another vocabulary."
            )
        # Set around nn.Module's registration: a plain attribute is left out of state_dict (checkpoints),
        # parameters() (the optimizer), and the train()/eval() switches (it stays in eval mode).
        object.__setattr__(self, "teacher", net)

    @classmethod
    def processor_source(cls, task_cfg) -> str | None:
        """Where the data's processor (tokenizer) comes from when neither data.tokenizer nor the model
        gives one: the teacher's export, since its logits index its vocabulary (the stage's hook, read
        before the module is built)."""
        from headstart.transfer.handoff import resolve_export_dir

        teacher = task_cfg.get("teacher")
        return str(resolve_export_dir(teacher, "task.teacher")) if teacher else None

    def build_collator(self, tokenizer):
        positions = getattr(self.teacher.config, "max_position_embeddings", None)
        if positions is not None and tokenizer.model_max_length > positions:
            raise ConfigError(
                f"data.max_length={tokenizer.model_max_length} is longer than the teacher's {positions} positions. "
                f"Lower data.max_length to at most {positions}."
            )
        return super().build_collator(tokenizer)

    def masked_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Student and teacher logits at the masked positions, and the true tokens there. (``forward``
        stays MLM's: the student's own loss against the true tokens.)"""
        inputs = encoder_inputs(batch)
        if self.teacher.device != self.device:  # not a registered child, so Lightning does not move it
            self.teacher.to(self.device)
        with torch.no_grad():
            teacher_logits, _ = masked_position_logits(self.teacher, inputs, batch["labels"])
        student_logits, target = masked_position_logits(self.net, inputs, batch["labels"])
        return self.vocab_logits(student_logits), teacher_logits, target

    def _distill_step(self, split: str, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        student_logits, teacher_logits, target = self.masked_logits(batch)
        loss, soft, hard = distillation_loss(student_logits, teacher_logits, target, self.temperature, self.alpha)
        agreement = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
        size = batch["input_ids"].size(0)
        self.log_split(split, {"loss": loss}, batch_size=size, prog_bar=True)
        self.log_split(split, {"distill_loss": soft, "mlm_loss": hard, "teacher_agreement": agreement},
                       batch_size=size)
        return loss, student_logits, target

    def training_step(self, batch, batch_idx):
        loss, _, _ = self._distill_step("train", batch)
        return loss

    def validation_step(self, batch, batch_idx):
        _, logits, target = self._distill_step("val", batch)
        self.val_metrics["masked_acc"].update(logits.argmax(-1), target)
        self.val_metrics["perplexity"].update(logits.float().unsqueeze(0), target.unsqueeze(0))
