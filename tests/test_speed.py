"""Speed switches: they change how the network runs, never what it computes or how it is saved."""

from __future__ import annotations

import pytest
import torch

from headstart.errors import ConfigError
from headstart.module import HeadstartModule
from headstart.speed import apply_speed


class _Module(torch.nn.Module):
    compiles_step = False  # a module whose network is compiled (HeadstartModule's rule)
    compile_for_training = HeadstartModule.compile_for_training

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))


def test_channels_last_and_compile_keep_outputs_and_parameter_names():
    torch.manual_seed(0)
    module = _Module()
    images = torch.randn(2, 1, 8, 8)
    before, names = module.net(images), list(module.state_dict())
    applied = apply_speed(module, compile=True, channels_last=True)
    assert applied == {"compile": True, "compile_mode": None, "compile_backend": "inductor", "channels_last": True,
                       "matmul_precision": "highest", "vocab_padded_to": None}
    assert module.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(module.state_dict()) == names  # checkpoints and exports are unchanged
    torch.testing.assert_close(module.net(images), before, rtol=1e-4, atol=1e-5)


def test_unknown_compile_mode():
    with pytest.raises(ConfigError, match="speed.compile_mode='fastest'"):
        apply_speed(_Module(), compile=True, compile_mode="fastest")


def test_length_bucketing_pads_less(tmp_path):
    """Line-by-line batches drawn by length (data.bucket_by_length) carry less padding than shuffled ones,
    and still visit every example once an epoch."""
    import random

    from transformers import DataCollatorWithPadding

    from headstart.data.text_lm import TextLMDataModule

    rng = random.Random(0)
    lines = [" ".join(rng.choice(["cat", "dog", "sail", "boat", "salt"]) for _ in range(rng.randint(2, 60)))
             for _ in range(400)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n")

    def padding_share(bucket: bool) -> float:
        data = TextLMDataModule(train_files=[str(path)], packing="lines", max_length=64, batch_size=16, vocab_size=100,
                                cache_dir=str(tmp_path / "cache"), bucket_by_length=bucket)
        data.prepare()
        data.set_collator(DataCollatorWithPadding(data.tokenizer))
        masks = [batch["attention_mask"] for batch in data.train_dataloader()]
        assert sum(m.shape[0] for m in masks) == len(data.datasets["train"])
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    torch.manual_seed(0)
    shuffled, bucketed = padding_share(False), padding_share(True)
    assert bucketed < 0.5 * shuffled, (bucketed, shuffled)
