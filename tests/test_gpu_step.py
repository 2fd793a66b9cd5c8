"""What a fast GPU training step needs, checked on the CPU: the masked- and causal-LM steps compile to one
graph that never recompiles, attention runs without a mask where nothing is padded (causal: ``is_causal``),
no host reads between logging steps, the vocabulary padded for tensor cores yet never seen outside, and
``trainer=gpu`` switching all of it on."""

from __future__ import annotations

import copy
import functools
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY_MODEL,
    TOPICS,
    logged,
    make_sentence,
    only_run_dir,
    run_train,
    text_spec,
    write_corpus,
)
from host_reads import HostReads

from headstart.data import collators
from headstart.data.text_lm import TextLMDataModule
from headstart.data.tokenizer import train_tokenizer
from headstart.objectives.causal_lm import CausalLanguageModeling
from headstart.objectives.masked_lm import MaskedLanguageModeling
from headstart.speed import apply_speed

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)
TINY_GPT = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
CONF = Path(__file__).resolve().parents[1] / "conf"


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_sentence(rng, rng.choice(list(TOPICS))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    texts = _texts(300)
    return {"mlm": train_tokenizer(iter([texts]), "wordpiece", 200, True, 64),
            "clm": train_tokenizer(iter([texts]), "bpe", 300, True, 64)}


def _module(objective: str, tokenizer, **kwargs):
    if objective == "mlm":
        return MaskedLanguageModeling(text_spec(tokenizer), ADAMW, **kwargs)
    return CausalLanguageModeling(text_spec(tokenizer, TINY_GPT), ADAMW, **kwargs)


def _lm_data(tmp_path: Path, objective: str, module_factory, packing: str = "blocks", batch_size: int = 7) -> tuple:
    """A small corpus through the data module (24-token blocks, or lines of 2 to 14 words), as a
    pretraining stage reads it."""
    rng = random.Random(3)
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(make_sentence(rng, "animals", rng.randint(2, 14)) for _ in range(120)) + "\n")
    data = TextLMDataModule(train_files=[str(corpus)], tokenizer_type="wordpiece" if objective == "mlm" else "bpe",
                            vocab_size=200, max_length=24, batch_size=batch_size, packing=packing,
                            cache_dir=str(tmp_path / "cache"), seed=0)
    data.prepare()
    module = module_factory(data.tokenizer)
    data.set_collator(module.build_collator(data.tokenizer))
    return data, module


# -- one graph, compiled once ------------------------------------------------------------------------------
@pytest.mark.parametrize(("objective", "packing"), [("mlm", "blocks"), ("clm", "blocks"), ("mlm", "lines")])
def test_the_lm_training_step_compiles_to_one_graph_that_never_recompiles(tmp_path, objective, packing):
    """Forward and loss compile whole (fullgraph) and keep one graph over two epochs of batches with
    different numbers of masked tokens (and, for lines, of different lengths, padded to one), as a stage
    sets the data up for a compiled step; the loss is the eager step's, batch by batch."""
    torch.manual_seed(0)
    data, module = _lm_data(tmp_path, objective, lambda tok: _module(objective, tok, **(
        {"mlm_probability": 0.3} if objective == "mlm" else {})), packing)
    module.eval()  # no dropout: the compiled and the eager step see the same function
    eager = copy.deepcopy(module)
    apply_speed(module, compile=True, compile_backend="aot_eager")
    data.use_static_shapes()
    assert len(data.datasets["train"]) % data.batch_size != 0  # there is a short last batch to drop
    from torch._dynamo.utils import counters

    counters.clear()
    masked_counts, shapes = set(), set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            for batch in data.train_dataloader():
                shapes.add(tuple(batch["input_ids"].shape))
                masked_counts.add(int((batch["labels"] != -100).sum()))
                loss = module.training_forward(batch)[0]
                torch.testing.assert_close(loss, eager(batch)[0], rtol=1e-5, atol=1e-5)
                loss.backward()
    assert shapes == {(data.batch_size, 24)}
    assert counters["stats"]["unique_graphs"] == 1
    if objective == "mlm":
        assert len(masked_counts) > 2


def test_a_compiled_module_pickles_and_compiles_again_where_it_lands(tokenizers):
    """ddp_spawn sends the module to its processes by pickle: the compiled function stays behind and each
    process compiles its own at its first step."""
    import pickle

    module = _module("mlm", tokenizers["mlm"]).eval()
    apply_speed(module, compile=True, compile_backend="aot_eager")
    batch = module.build_collator(tokenizers["mlm"])([tokenizers["mlm"](t) for t in _texts(4, seed=9)])
    loss = module.training_forward(batch)[0]
    assert module._compiled_step is not None
    copy_ = pickle.loads(pickle.dumps(module))
    assert copy_._compiled_step is None and copy_._compile_settings == {"mode": None, "backend": "aot_eager"}
    torch.testing.assert_close(copy_.training_forward(batch)[0], loss)
    assert copy_._compiled_step is not None


def test_line_data_keeps_its_short_last_batch(tmp_path):
    corpus = write_corpus(tmp_path / "train.txt", 20, seed=3)
    data = TextLMDataModule(train_files=[str(corpus)], tokenizer_type="wordpiece", vocab_size=200, max_length=24,
                            batch_size=5, packing="lines", cache_dir=str(tmp_path / "cache"), seed=0)
    data.prepare()
    data.set_collator(_module("mlm", data.tokenizer).build_collator(data.tokenizer))
    sizes = [len(batch["input_ids"]) for batch in data.train_dataloader()]
    assert sum(sizes) == len(data.datasets["train"]) and sizes[-1] < 5


def test_the_masked_lm_step_with_fixed_positions_is_the_step_with_the_drawn_ones(tokenizers):
    """On an accelerator (or compiled) the head runs at a fixed number of positions; the loss, and the
    masked logits, are those of the positions drawn."""
    tok = tokenizers["mlm"]
    torch.manual_seed(0)
    mlm = _module("mlm", tok, mlm_probability=0.3).eval()
    torch.manual_seed(1)
    batch = mlm.build_collator(tok)([tok(t) for t in _texts(6, seed=4)])
    exact_loss, exact_logits, exact_target = mlm(batch)
    capacity = collators.prediction_capacity(batch["labels"].numel(), 0.3)
    assert capacity > len(exact_target)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("headstart.objectives.masked_lm.reading_waits", lambda tensor: True)
        loss, logits, target = mlm(batch)
    assert logits.shape[0] == capacity
    labelled = target != -100
    torch.testing.assert_close(loss, exact_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits[labelled], exact_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(target[labelled], exact_target) and not labelled[len(exact_target):].any()


def test_masking_never_draws_more_tokens_than_the_step_has_room_for(tokenizers, monkeypatch):
    tok = tokenizers["mlm"]
    n, p = 32 * 512, 0.15
    mean, sd = n * p, (n * p * (1 - p)) ** 0.5
    assert mean + 5 * sd <= collators.prediction_capacity(n, p) <= mean + 5 * sd + 9
    examples = [tok(t) for t in _texts(6, seed=5)]
    torch.manual_seed(0)
    uncapped = collators.CappedMaskingCollator(tok, mlm=True, mlm_probability=0.5)(examples)
    assert int((uncapped["labels"] != -100).sum()) > 3
    monkeypatch.setattr(collators, "prediction_capacity", lambda positions, probability: 3)
    torch.manual_seed(0)
    capped = collators.CappedMaskingCollator(tok, mlm=True, mlm_probability=0.5)(examples)
    original = tok.pad(examples, return_tensors="pt")["input_ids"]
    kept = capped["labels"] != -100
    assert int(kept.sum()) == 3
    assert torch.equal(capped["labels"][kept], original[kept])  # labels are the true tokens
    # The surplus went back: every position without a label has its own token again.
    assert torch.equal(capped["input_ids"][~kept], original[~kept])


# -- attention without a mask where nothing is padded -------------------------------------------------------
@pytest.fixture
def attention_calls(monkeypatch) -> list[dict]:
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recorded(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append({"mask": attn_mask, "is_causal": is_causal})
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
    return calls


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_unpadded_batches_attend_without_a_mask(tokenizers, attention_calls, objective):
    tok = tokenizers[objective]
    torch.manual_seed(0)
    module = _module(objective, tok).eval()
    collate = module.build_collator(tok)
    long_text = " ".join(_texts(20, seed=6))
    blocks = collate([tok(long_text, truncation=True, max_length=24) for _ in range(3)])
    assert "attention_mask" not in blocks
    loss_without = module(blocks)[0]
    assert attention_calls and all(c["mask"] is None for c in attention_calls)
    assert all(c["is_causal"] for c in attention_calls) == (objective == "clm")
    # The same batch with its all-ones mask computes the same loss.
    attention_calls.clear()
    torch.manual_seed(0)
    with_mask = {**blocks, "attention_mask": torch.ones_like(blocks["input_ids"])}
    torch.testing.assert_close(module(with_mask)[0], loss_without, rtol=1e-5, atol=1e-5)
    # Padded rows keep their mask.
    padded = collate([tok(t) for t in (long_text[:40], long_text[:80], long_text[:120])])
    assert "attention_mask" in padded and not bool(padded["attention_mask"].all())


# -- the vocabulary padded to 64 rows -------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_a_padded_vocabulary_changes_no_loss_no_sample_and_no_export(tmp_path, tokenizers, objective):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    tok = tokenizers[objective]
    vocab = len(tok)
    assert vocab % 64
    torch.manual_seed(0)
    module = _module(objective, tok, **({"sample_new_tokens": 8} if objective == "clm" else {})).eval()
    plain = copy.deepcopy(module)
    applied = apply_speed(module, pad_vocab_to_multiple_of=64)
    assert applied["vocab_padded_to"] == module.net.config.vocab_size == 64 * (vocab // 64 + 1)
    with torch.no_grad():  # make the padding rows win every argmax if they were ever scored
        module.net.get_output_embeddings().weight[vocab:] = 50.0
    torch.manual_seed(1)
    batch = module.build_collator(tok)([tok(t) for t in _texts(4, seed=8)])
    loss, logits, _ = module(batch)
    assert logits.shape[-1] == vocab
    torch.testing.assert_close(loss, plain(batch)[0], rtol=1e-5, atol=1e-5)
    if objective == "clm":
        generated, generate = [], module.net.generate
        module.net.generate = lambda *a, **k: generated.append(generate(*a, **k)) or generated[-1]
        module.sample(batch["input_ids"][0, :4])
        assert generated[0].shape[1] == 4 + 8 and int(generated[0].max()) < vocab
    module.export(str(tmp_path / "export"), tok, {})
    auto = (AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM).from_pretrained(tmp_path / "export")
    assert auto.config.vocab_size == vocab
    inputs = {"input_ids": batch["input_ids"][:, :8]}
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(**inputs).logits, module.vocab_logits(module.net(**inputs).logits))


# -- no host reads between logging steps ---------------------------------------------------------------------
def _compose(overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from headstart.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    OmegaConf.update(cfg, "hydra.runtime.output_dir", str(output_dir), force_add=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_training_reads_nothing_back_from_the_device_between_logging_steps(tmp_path, monkeypatch, objective):
    """A pretraining stage as train.py runs it (checkpoints, NaN guard, throughput, learning-rate monitor,
    progress bar, CSV logger), with every tensor treated as an accelerator's: the host reads only at the
    logging steps (every 4th) and at the end; MFU is logged against the card's peak."""
    import headstart.pipeline.stage as stage
    from headstart import throughput

    root = tmp_path / "run"
    write_corpus(tmp_path / "train.txt", 300, seed=0)
    for where in ("headstart.throughput", "headstart.training_guards", "headstart.objectives.masked_lm"):
        monkeypatch.setattr(f"{where}.reading_waits", lambda tensor: True)
    monkeypatch.setattr(throughput, "device_peak", lambda trainer: 1e9)
    reads = HostReads()
    build = stage._build_trainer

    def with_recorder(*args):
        trainer, agreement = build(*args)
        trainer.callbacks.append(reads)
        return trainer, agreement

    monkeypatch.setattr(stage, "_build_trainer", with_recorder)
    model = TINY_MODEL if objective == "mlm" else ["model=gpt_tiny", "model.arch.n_embd=32", "model.arch.n_layer=2",
                                                   "model.arch.n_head=2", "model.arch.n_positions=64"]
    cfg = _compose([f"experiment=text_{objective}", "logger=csv", f"paths.root_dir={root}", "data=text_files",
                    f"data.train_files=[{tmp_path / 'train.txt'}]", *model, "data.max_length=32",
                    "data.vocab_size=200", "data.batch_size=8", "trainer.max_steps=17", "trainer.log_every_n_steps=4",
                    "callbacks.throughput.window_size=8", "trainer.limit_val_batches=0", "test_after_fit=false",
                    "export_backbone=false", "data.num_workers=1", "speed.compile=true", "speed.compile_backend=aot_eager",
                    "speed.pad_vocab_to_multiple_of=64"], root / "out")
    with reads.recording():
        stage.run_stage(cfg)
    steps = {step for step, _, _ in reads.reads}
    logging_steps = {4, 8, 12, 16, 17}  # and the last
    assert steps and steps <= logging_steps, [r for r in reads.reads if r[0] not in logging_steps]
    run_dir = root / "out"
    flops, mfu = logged(run_dir, "train/device/flops_per_sec"), logged(run_dir, "train/device/mfu")
    assert flops and mfu == pytest.approx([f / 1e9 for f in flops])
    tokens = logged(run_dir, "train/device/items_per_sec")
    samples = logged(run_dir, "train/device/samples_per_sec")
    assert tokens == pytest.approx([32 * s for s in samples])  # 32-token blocks, no padding


# -- trainer=gpu ------------------------------------------------------------------------------------------------
def test_trainer_gpu_is_fast_by_default_and_the_cpu_default_is_not_changed(tmp_path):
    gpu = _compose(["experiment=text_mlm", "trainer=gpu"], tmp_path)
    assert (gpu.trainer.accelerator, gpu.trainer.precision) == ("gpu", "bf16-mixed")
    assert gpu.speed.compile and gpu.speed.matmul_precision == "high" and gpu.speed.pad_vocab_to_multiple_of == 64
    assert gpu.data.num_workers >= 2
    cpu = _compose(["experiment=text_mlm"], tmp_path)
    assert not cpu.speed.compile and cpu.speed.matmul_precision is None and cpu.speed.pad_vocab_to_multiple_of is None
    assert cpu.data.num_workers == 0 and cpu.trainer.precision in ("32-true", "32", 32, None)
    multitask = _compose(["experiment=text_multitask", "trainer=gpu"], tmp_path)
    assert multitask.data.num_workers >= 2


def test_mfu_is_measured_against_the_cards_dense_peak(monkeypatch):
    from types import SimpleNamespace

    from headstart.throughput import device_peak

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), is_global_zero=True,
                              precision="bf16-mixed")
    assert device_peak(trainer) == pytest.approx(989.4e12)  # dense bf16, not the fp32 or sparse figure
    trainer.precision = "16-mixed"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    assert device_peak(trainer) == pytest.approx(121e12)
    trainer.strategy.root_device = torch.device("cpu")
    assert device_peak(trainer) is None


@pytest.mark.slow
def test_train_py_compiles_the_masked_lm_step_with_inductor_and_it_learns(tmp_path, corpus_dir, shared_cache):
    """speed.compile=true through train.py (inductor's kernels, the padded vocabulary) on line data, whose
    lengths the stage pads to one for the compiled step (more than 8 shapes would end the run): the loss
    falls, the run records the switches, and the export has the tokenizer's vocabulary."""
    proc = run_train(["experiment=text_mlm", "data=text_files", f"data.train_files=[{corpus_dir / 'train.txt'}]",
                      f"data.val_files=[{corpus_dir / 'val.txt'}]", *TINY_MODEL, "data.max_length=32",
                      "data.packing=lines", "data.batch_size=7",
                      "data.vocab_size=200", "trainer.max_epochs=3", "logger=csv", "trainer.log_every_n_steps=5",
                      "speed.compile=true", "speed.pad_vocab_to_multiple_of=64"], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["speed"]["compile"] and results["speed"]["vocab_padded_to"] % 64 == 0
    losses = logged(run_dir, "val/loss")
    assert losses[-1] < losses[0] - 0.3, losses
    exported = json.loads((run_dir / "export" / "config.json").read_text())["vocab_size"]
    assert exported < results["speed"]["vocab_padded_to"] and exported == len(
        json.loads((run_dir / "export" / "tokenizer.json").read_text())["model"]["vocab"])
