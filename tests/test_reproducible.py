"""Same command, same result: two fresh processes with separate caches (each trains its own
tokenizer and tokenizes its own data) end with bit-identical weights on CPU, and the same tokenizer."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_MODEL, only_run_dir, run_train
from safetensors.torch import load_file

from headstart.data.tokenizer import train_tokenizer


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_tokenizer_trained_twice_in_fresh_processes_is_the_same(kind, tmp_path):
    import subprocess
    import sys

    script = ("import sys, random; from conftest import write_corpus; from headstart.data.tokenizer import "
              "train_tokenizer; from pathlib import Path; p = write_corpus(Path(sys.argv[1]) / 'c.txt', 300, 0); "
              f"print(train_tokenizer(iter([p.read_text().splitlines()]), {kind!r}, 300, True, 64)"
              ".backend_tokenizer.to_str())")
    outputs = [subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                              cwd=str(__import__("pathlib").Path(__file__).parent), check=True).stdout
               for _ in range(3)]
    assert outputs[0] == outputs[1] == outputs[2]
    vocab = json.loads(outputs[0])["model"]["vocab"]
    assert len(vocab) > 100
    # The word-continuing pieces are ordinary entries, not special tokens that text could spell.
    assert {t["content"] for t in json.loads(outputs[0])["added_tokens"]} <= {
        "[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "<unk>", "<pad>", "<s>", "</s>", "<mask>"}


def test_wordpiece_pieces_split_text_as_before():
    tok = train_tokenizer(iter([["the quick brown fox jumps over the lazy dog"] * 20]), "wordpiece", 60, True, 32)
    ids = tok("the quick fox ##e")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "the" in tokens
    assert "##e" not in tokens  # typed "##e" is split like any text, not matched as one special token
    assert tok.decode(ids, skip_special_tokens=True).startswith("the quick fox")


@pytest.mark.slow
def test_two_fresh_runs_of_one_command_give_the_same_weights(tmp_path, corpus_dir):
    command = ["experiment=text_mlm", "data=text_files", f"data.train_files=[{corpus_dir / 'train.txt'}]",
               f"data.val_files=[{corpus_dir / 'val.txt'}]", "data.max_length=32", "data.vocab_size=300",
               "logger=csv", *TINY_MODEL, "trainer.max_steps=8"]
    runs = []
    for name in ("first", "second"):
        proc = run_train(command, tmp_path / name, cache=tmp_path / name / "cache")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(only_run_dir(tmp_path / name))
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    assert results[0]["tokenizer_fingerprint"] == results[1]["tokenizer_fingerprint"] is not None
    first, second = (load_file(str(r / "export" / "model.safetensors")) for r in runs)
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].equal(second[key]), key
