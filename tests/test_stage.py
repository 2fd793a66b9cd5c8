"""Single stages through train.py: tracking, caching, and models from local HF directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_MODEL, only_run_dir, run_train

pytestmark = pytest.mark.slow


def _mlm_args(corpus: Path, epochs: int = 2) -> list[str]:
    return ["experiment=text_mlm", "data=text_files", f"data.train_files=[{corpus / 'train.txt'}]",
            f"data.val_files=[{corpus / 'val.txt'}]", "data.max_length=32", "data.vocab_size=300",
            "data.batch_size=16", f"trainer.max_epochs={epochs}", *TINY_MODEL]


def test_wandb_offline_run_and_csv_beside_it(tmp_path, corpus_dir, shared_cache):
    proc = run_train([*_mlm_args(corpus_dir, epochs=1), "logger=default", "run_name=tiny-mlm"], tmp_path,
                     shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    [wandb_run] = (run_dir / "wandb").glob("offline-run-*")
    [history] = wandb_run.glob("run-*.wandb")
    # The run file (protobuf records) carries the run name, the composed config and the metrics.
    records = history.read_bytes()
    for expected in (b"tiny-mlm", b"mlm_probability", b"config_hash", b"val/loss"):
        assert expected in records, expected
    assert (run_dir / "csv" / "metrics.csv").read_text().count("\n") > 2
    assert f"Outputs: {run_dir.resolve()}" in proc.stdout


def test_second_run_reuses_tokenizer_and_tokenized_data(tmp_path, corpus_dir):
    cache = tmp_path / "cache"
    first = run_train([*_mlm_args(corpus_dir, epochs=1), "logger=csv"], tmp_path / "a", cache)
    second = run_train([*_mlm_args(corpus_dir, epochs=1), "logger=csv"], tmp_path / "b", cache)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    assert "Training a wordpiece tokenizer" in first.stdout and "Tokenizing" in first.stdout
    assert "Training a wordpiece tokenizer" not in second.stdout and "Tokenizing" not in second.stdout
    assert "Tokenized data loaded from cache" in second.stdout
    # Both runs saved the same tokenizer with their outputs.
    vocab = [json.loads((only_run_dir(tmp_path / d) / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
             for d in ("a", "b")]
    assert vocab[0] == vocab[1]


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory, corpus_dir) -> Path:
    """A local HF model directory, as `save_pretrained` writes it (what a downloaded model looks like)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from headstart.data.tokenizer import train_tokenizer

    lines = (corpus_dir / "train.txt").read_text().splitlines()
    tokenizer = train_tokenizer(iter([lines]), "wordpiece", 200, True, 32)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("hf") / "tiny-bert"
    BertForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_model_from_local_hf_directory(tmp_path, corpus_dir, hf_model_dir):
    from safetensors.torch import load_file

    args = [a for a in _mlm_args(corpus_dir, epochs=1) if not a.startswith("model.")]
    proc = run_train([*args, "logger=csv", "model=hf_dir", f"model.name_or_path={hf_model_dir}",
                      "trainer.max_epochs=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert "Training a wordpiece tokenizer" not in proc.stdout  # the model's own tokenizer is used
    original = load_file(hf_model_dir / "model.safetensors")
    trained = load_file(run_dir / "export" / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    assert original[key].shape == trained[key].shape
    assert not (original[key] == trained[key]).all(), "training started from the directory's weights but did not move"
    tokenizer_json = json.loads((run_dir / "tokenizer" / "tokenizer.json").read_text())
    assert tokenizer_json == json.loads((hf_model_dir / "tokenizer.json").read_text())


def test_gpt_backbone_classifies_with_bpe_tokenizer(tmp_path, corpus_dir, shared_cache):
    """The GPT-style decoder from a config, a byte-level BPE tokenizer, last-token pooling."""
    proc = run_train([
        "experiment=text_classification", "data=text_classification_files", "logger=csv", "model=gpt_tiny",
        "model.arch.n_embd=32", "model.arch.n_head=2", "model.arch.n_positions=64", "data.tokenizer_type=bpe",
        "data.vocab_size=400", "data.max_length=32", "task.pooling=last", "trainer.max_epochs=4",
        "task.optimizer.lr=2e-3", f"data.train_files=[{corpus_dir / 'cls_train.jsonl'}]",
        f"data.val_files=[{corpus_dir / 'cls_val.jsonl'}]", f"data.test_files=[{corpus_dir / 'cls_test.jsonl'}]",
    ], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert results["task"] == "SequenceClassifier"
    assert results["metrics"]["test/acc"] > 0.6  # three balanced classes: chance is 1/3
    config = json.loads((only_run_dir(tmp_path) / "tokenizer" / "tokenizer.json").read_text())
    assert config["model"]["type"] == "BPE"


def test_throughput_flops_first_step_and_memory_are_recorded(tmp_path, corpus_dir, shared_cache):
    """The throughput monitor logs model FLOPs/s beside tokens/s; results.json has the time to the first
    optimizer step, the peak memory and the speed switches."""
    from conftest import logged

    proc = run_train([*_mlm_args(corpus_dir, epochs=3), "logger=csv", "trainer.log_every_n_steps=5",
                      "task.optimizer.fused=true"], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    first = results["time_to_first_step"]
    assert 0 < first["since_stage_start_s"] < first["since_process_start_s"] < 120, first
    assert "First optimizer step" in proc.stdout + proc.stderr
    assert results["peak_rss_mb"] > 100 and results["speed"] == {
        "compile": False, "compile_mode": None, "compile_backend": "inductor", "channels_last": False,
        "matmul_precision": "highest", "vocab_padded_to": None}
    flops, samples = logged(run_dir, "train/device/flops_per_sec"), logged(run_dir, "train/device/samples_per_sec")
    assert flops and len(flops) == len(samples)
    # FLOPs per example: a 32-token block through the tiny BERT (matrix weights x 6 per token, plus
    # attention), between the count without the vocabulary projection and with it at every token.
    config = json.loads((run_dir / "export" / "config.json").read_text())
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    per_layer = 4 * d * d + 2 * d * config["intermediate_size"]
    body = 6 * 32 * (layers * per_layer + 2 * d * d) + 12 * layers * d * 32 * 32
    per_example = flops[-1] / samples[-1]
    assert body < per_example < body + 6 * 32 * d * vocab, (per_example, body)
