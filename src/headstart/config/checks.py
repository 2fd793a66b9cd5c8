"""Value checks: the structured schemas check keys and types; this checks that numbers make sense
(sizes and counts at least 1, learning rates above 0, probabilities in their ranges, a step budget
that trains), once per stage before anything is built. A value out of range would otherwise end in a
torch traceback, or worse, train nothing and write an export marked finished."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from headstart.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low``/``high`` bounds (inclusive unless ``open_low``/``open_high``),
    an integer if ``integer``, and ``also`` values outside them that have a meaning (-1, None). NaN is
    never allowed, nor an infinity unless ``also`` names it: ``task.optimizer.lr=inf`` is a typo, not a
    learning rate, and would only be stopped by the NaN guard once it has spoilt the weights."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    also: tuple[Any, ...] = (None,)
    why: str = ""

    def allows(self, value: Any) -> bool:
        if value is None:
            return None in self.also
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.high == math.inf:
            bound = f"{'>' if self.open_low else '>='} {low}"
        else:
            bound = f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        extra = ["null" if v is None else repr(v) for v in self.also]
        text = f"{kind} {bound}" + (f" (or {' / '.join(extra)})" if extra else "")
        return text + (f": {self.why}" if self.why else "")


def _number(x: float) -> str:
    """A bound as typed: whole numbers in full (2**32 - 1 as 4294967295), others in %g."""
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


COUNT = Range(1, integer=True)
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
DROPOUT = Range(0, 1, open_high=True)

# fnmatch patterns over dotted config keys -> the range their values must be in.
RULES: dict[str, Range] = {
    # Lightning's seed_everything takes an unsigned 32-bit seed; anything else ends in its traceback.
    "seed": Range(0, 2**32 - 1, integer=True, also=(), why="the random seed; seeds are unsigned 32-bit integers"),
    "data.batch_size": Range(1, integer=True, also=(), why="examples per optimizer step"),
    "data.eval_batch_size": COUNT,
    "data.*.batch_size": COUNT,
    "data.max_length": Range(8, integer=True, also=(), why="tokens per sequence; fewer leave no context to learn from"),
    "data.vocab_size": Range(32, integer=True, why="the tokenizer's vocabulary"),
    "data.image_size": Range(4, integer=True),
    "data.num_workers": Range(0, integer=True),
    "speed.pad_vocab_to_multiple_of": Range(1, integer=True, why="rows the LM vocabulary is padded to a multiple of"),
    "data.min_test_rows": Range(0, integer=True, also=(), why="the fewest test rows data.drop_eval_overlap may leave"),
    "data.min_test_share": Range(0, 1, also=(), why="the smallest share of the test file data.drop_eval_overlap may leave"),
    "data.val_fraction": Range(0, 1, open_high=True, why="the share of the training data held out for validation"),
    "task.optimizer.lr": Range(0, open_low=True, also=(), why="a learning rate of 0 or below trains nothing or diverges"),
    "task.optimizer.weight_decay": NON_NEGATIVE,
    "task.scheduler.warmup_ratio": Range(0, 1, open_high=True),
    "task.scheduler.warmup_steps": Range(0, integer=True),
    "task.mlm_probability": Range(0, 1, open_low=True, open_high=True, also=(),
                                  why="the share of tokens masked; with 0 nothing is predicted and nothing learns"),
    "task.mask_replace_prob": PROBABILITY,
    "task.random_replace_prob": PROBABILITY,
    "task.mask_ratio": Range(0, 1, open_low=True, open_high=True, why="the share of patches hidden"),
    "task.temperature": POSITIVE,
    "task.alpha": PROBABILITY,
    "task.momentum": Range(0, 1, open_high=True),
    "task.queue_size": COUNT,
    "task.window": COUNT,
    "task.negatives": COUNT,
    "task.knn_k": Range(0, integer=True, also=(), why="neighbours of the kNN monitor (val/knn_acc); 0 switches it off"),
    "task.latent_dim": COUNT,
    "task.projection_dim": COUNT,
    "task.kl_weight": NON_NEGATIVE,
    "task.online_probe_lr_scale": POSITIVE,
    "task.augment.*_prob": PROBABILITY,
    "task.classifier_dropout": DROPOUT,
    "model.arch.hidden_size": COUNT,
    "model.arch.num_hidden_layers": COUNT,
    "model.arch.num_attention_heads": COUNT,
    "model.arch.intermediate_size": COUNT,
    "model.arch.max_position_embeddings": COUNT,
    "model.arch.*dropout*": DROPOUT,
    "trainer.max_steps": Range(1, integer=True, also=(-1,),
                               why="0 trains nothing, yet would export the untrained weights as finished"),
    "trainer.max_epochs": Range(1, integer=True, also=(None, -1)),
    "trainer.min_epochs": Range(0, integer=True),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.num_nodes": COUNT,
    "trainer.log_every_n_steps": COUNT,
    "trainer.check_val_every_n_epoch": COUNT,
    "trainer.limit_train_batches": Range(0, open_low=True, why="0 trains nothing"),
    "trainer.val_check_interval": POSITIVE,
    "trainer.gradient_clip_val": NON_NEGATIVE,
    "transfer.layer_lr_decay": Range(0, 1, open_low=True, why="each layer's rate is this times the one above it"),
    "transfer.freeze_layers": Range(0, integer=True),
}


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a config, without resolving what cannot be resolved yet."""
    if isinstance(node, DictConfig):
        for key in node:
            path = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_missing(node, key):
                continue
            try:
                child = node._get_node(key)
                value = child._dereference_node() if child._is_interpolation() else child
            except Exception:  # noqa: BLE001 - an interpolation only a later step can resolve (hydra:...)
                continue
            yield from _leaves(value, path)
    elif isinstance(node, ListConfig):
        return
    else:
        yield prefix, node._value() if hasattr(node, "_value") else node


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def problems(cfg: DictConfig) -> list[str]:
    """One sentence per value of ``cfg`` outside its range; a NaN or infinite number is refused under
    any key checked, with or without a rule (a rule may allow an infinity by naming it in ``also``)."""
    found = []
    for key, value in _leaves(cfg):
        if key != "seed" and not key.startswith(("data.", "task.", "model.", "trainer.", "transfer.")):
            continue
        shown = "null" if value is None else repr(value)
        rules = [rule for pattern, rule in RULES.items() if fnmatch.fnmatchcase(key, pattern)]
        broken = next((rule for rule in rules if not rule.allows(value)), None)
        if broken is not None:
            what = "is not a finite number" if _non_finite(value) else "is out of range"
            found.append(f"{key}={shown} {what}: it must be {broken.describe()}")
        elif not rules and _non_finite(value):
            found.append(f"{key}={shown} is not a finite number: give it a finite value (or leave it at its default)")
    return found


def check_values(cfg: DictConfig, where: str = "") -> None:
    """Refuse a config with a value out of range, naming every such key, its value and its range."""
    found = problems(cfg)
    if found:
        raise ConfigError(f"{'; '.join(found)}. Set {'it' if len(found) == 1 else 'each'} on the command line to "
                          f"a value in range{where}.")
