"""Gradual unfreezing (``callbacks=gradual_unfreezing``): Lightning's ``BackboneFinetuning``, which
torch's learning-rate schedules no longer let unfreeze."""

from __future__ import annotations

from lightning.pytorch.callbacks import BackboneFinetuning


def _callbacks_rate(step: int) -> float:
    """The schedule's factor for a param group the callback added: 1, the rate the callback set."""
    return 1.0


class GradualUnfreezing(BackboneFinetuning):
    """The backbone (``module.backbone``) frozen until epoch ``unfreeze_backbone_at_epoch``, then trained as
    a param group of its own at a rate the callback sets each epoch (``BackboneFinetuning``: a share of the
    head's rate, growing until it reaches it). The task's schedule (warmup, decay) has one rate per param
    group it was built with, and torch sets them over the optimizer's groups strictly: the added group
    stopped training at its first step. Here the schedule keeps the rate the callback gives its groups."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        for config in trainer.lr_scheduler_configs:
            _schedule_added_groups(config.scheduler)


def _schedule_added_groups(scheduler) -> None:
    """Give a lambda schedule (transformers' warmup schedules, ``LambdaLR``) an entry for each param group
    added since it was built, which holds the rate the group has now (set anew each epoch)."""
    rules = getattr(scheduler, "lr_lambdas", None)
    if rules is None:
        return
    groups = scheduler.optimizer.param_groups
    rules.extend([_callbacks_rate] * (len(groups) - len(rules)))
    for i, (group, rule) in enumerate(zip(groups, rules, strict=True)):
        if rule is _callbacks_rate:
            if i < len(scheduler.base_lrs):  # also a resumed schedule's, whose rates were saved with it
                scheduler.base_lrs[i] = group["lr"]
            else:
                scheduler.base_lrs.append(group["lr"])
