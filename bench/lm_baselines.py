"""The two baselines headstart's ``train.py`` is measured against, on headstart's own tokenizer and token
blocks: a plain PyTorch loop and Hugging Face's ``Trainer``. Shared by ``bench/lm_throughput.py`` (CPU,
eager, fp32) and ``bench/gpu_mfu.py`` (GPU: torch.compile, bf16 autocast, fused AdamW).

``prepared`` builds headstart's ``TextLMDataModule`` on the corpus (tokenizer and packed blocks come from
the cache ``train.py`` reads too, given the same ``paths.cache_dir``), a fresh model and the objective's
collator, as headstart builds them; both baselines train that model on those blocks with AdamW (weight
decay off biases and norms) and the same linear warm-up schedule.

Both return a ``StepLog``: the clock at the steps asked for (``marks``; step 0 is the start) and the
tokens and batch shape of every step. On a GPU the device is synchronised at the marks only, so the
steps in between queue up as they do in real training.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Setup:
    """What all three systems share: the model, the data and the optimisation."""

    objective: str  # "mlm" (masked LM) or "clm" (causal LM)
    tokenizer_type: str  # "wordpiece" or "bpe"
    vocab_size: int  # asked of the tokenizer trainer (a small corpus can give fewer)
    max_length: int  # tokens a block
    batch_size: int
    lr: float
    steps: int  # optimizer steps in all: the length of the schedule
    arch: dict  # a transformers config (model_type and sizes)
    corpus: Path
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06


@dataclass
class Speed:
    """How the baselines run. The defaults are bench/lm_throughput.py's CPU settings."""

    device: str = "cpu"
    compile: bool = False  # torch.compile the model (the Trainer: torch_compile=True)
    bf16: bool = False  # bf16 autocast (the Trainer: bf16=True)
    fused: bool = False  # the plain loop's AdamW(fused=True); the Trainer uses adamw_torch_fused either way
    tf32: bool = False  # TF32 float32 matmuls
    num_workers: int = 0  # loader worker processes (persistent, pinned memory on a GPU)
    drop_last: bool = False  # drop each epoch's short last batch (as headstart's loader does for blocks)
    log_every: int = 10  # the Trainer's logging_steps


@dataclass
class StepLog:
    """``times[step]``: the clock when ``step`` ended, at the marked steps (step 0: the start);
    ``tokens[step]`` and ``shapes[step]``: the non-padding tokens and (batch, length) of each step
    (index 0 unused)."""

    times: dict[int, float] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=lambda: [0])
    shapes: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])


def prepared(setup: Setup, cache: Path, seed: int = 42):
    """The data module (tokenizer and packed blocks, from train.py's cache), a fresh model and the
    objective's collator, as headstart builds them."""
    import torch

    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.text_lm import TextLMDataModule
    from headstart.objectives.causal_lm import CausalLanguageModeling
    from headstart.objectives.masked_lm import MaskedLanguageModeling

    data = TextLMDataModule(train_files=[str(setup.corpus)], tokenizer_type=setup.tokenizer_type,
                            vocab_size=setup.vocab_size, max_length=setup.max_length, batch_size=setup.batch_size,
                            packing="blocks", cache_dir=str(cache), seed=seed)
    data.prepare()
    backbone = TextBackboneSpec(arch=setup.arch)
    backbone.bind_tokenizer(data.tokenizer)
    torch.manual_seed(seed)
    task = MaskedLanguageModeling if setup.objective == "mlm" else CausalLanguageModeling
    module = task(backbone, optimizer=functools.partial(torch.optim.AdamW, lr=setup.lr))
    return data, module.net, module.build_collator(data.tokenizer)


def _tokens(batch) -> int:
    """Non-padding tokens of a batch, as headstart's throughput monitor counts them: every position of a
    batch without an attention mask (packed blocks need none). A mask already on an accelerator is not
    summed (that would wait for the device): packed blocks have no padding, so every position counts."""
    mask = batch.get("attention_mask")
    if mask is None:
        return batch["input_ids"].numel()
    return int(mask.sum()) if mask.device.type == "cpu" else mask.numel()


def _sync(speed: Speed) -> None:
    if speed.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def plain_loop(setup: Setup, cache: Path, speed: Speed | None = None, marks=None) -> StepLog:
    """What a researcher writes by hand: DataLoader, forward, ``.loss.backward()``, AdamW with the same
    no-decay groups, the same linear warm-up schedule; on a GPU with torch.compile, bf16 autocast and
    fused AdamW as ``speed`` asks. ``marks``: the steps to read the clock at (None: every step)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    speed = speed or Speed()
    if speed.tf32:
        _set_tf32(True)
    data, net, collator = prepared(setup, cache)
    workers = speed.num_workers
    loader = DataLoader(data.datasets["train"], batch_size=setup.batch_size, shuffle=True, collate_fn=collator,
                        drop_last=speed.drop_last, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=speed.device.startswith("cuda"))
    net.to(speed.device)
    groups = [{"params": [p for p in net.parameters() if p.ndim >= 2], "weight_decay": setup.weight_decay},
              {"params": [p for p in net.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=setup.lr, fused=speed.fused or None)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(setup.warmup_ratio * setup.steps), setup.steps)
    model = torch.compile(net) if speed.compile else net
    device_type = torch.device(speed.device).type
    net.train()
    log = StepLog(times={0: time.perf_counter()})
    step = 0
    while step < setup.steps:
        for batch in loader:
            log.tokens.append(_tokens(batch))
            log.shapes.append(tuple(batch["input_ids"].shape))
            inputs = {k: v.to(speed.device, non_blocking=True) for k, v in batch.items() if k != "special_tokens_mask"}
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=speed.bf16):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if marks is None or step in marks:
                _sync(speed)
                log.times[step] = time.perf_counter()
            if step >= setup.steps:
                break
    if speed.tf32:
        _set_tf32(False)
    return log


def hf_trainer(setup: Setup, cache: Path, output_dir: Path, speed: Speed | None = None, marks=None) -> StepLog:
    """Hugging Face's Trainer with the same settings: no gradient clipping (train.py has none by
    default), no evaluation or saving inside the timed steps, fused AdamW (its default optimizer); on a
    GPU ``torch_compile=True``, ``bf16=True`` and loader workers as ``speed`` asks."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    speed = speed or Speed()
    data, net, collator = prepared(setup, cache)
    log = StepLog()

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            log.times[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if marks is None or state.global_step in marks:
                _sync(speed)
                log.times[state.global_step] = time.perf_counter()

    class CountingTrainer(Trainer):
        """Counts each step's tokens from the batch it trains on."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            log.tokens.append(_tokens(inputs))
            log.shapes.append(tuple(inputs["input_ids"].shape))
            return super().training_step(model, inputs, num_items_in_batch)

    cpu = not speed.device.startswith("cuda")
    gpu_settings = {} if cpu else {
        "torch_compile": speed.compile, "bf16": speed.bf16, "tf32": speed.tf32, "optim": "adamw_torch_fused",
        "dataloader_pin_memory": True, "dataloader_persistent_workers": speed.num_workers > 0,
    }
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=setup.batch_size, max_steps=setup.steps,
        learning_rate=setup.lr, weight_decay=setup.weight_decay, warmup_steps=int(setup.warmup_ratio * setup.steps),
        lr_scheduler_type="linear", max_grad_norm=0.0, logging_steps=speed.log_every, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=cpu, dataloader_num_workers=speed.num_workers,
        dataloader_drop_last=speed.drop_last, seed=42, disable_tqdm=False, **gpu_settings,
    )
    CountingTrainer(model=net, args=args, train_dataset=data.datasets["train"], data_collator=collator,
                    callbacks=[StepTimes()]).train()
    return log
