"""Caches are checked, not trusted: each cached tokenizer and tokenized dataset carries a manifest of
its files' hashes; an entry that is truncated, changed (even one token id, still in range) or missing
a file is logged, removed and rebuilt, and the run's metrics are those of a clean cache."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_MODEL, only_run_dir, run_train

from headstart.data.text_base import MANIFEST, cache_damage, write_manifest


def test_cache_damage_names_what_changed(tmp_path):
    entry = tmp_path / "entry"
    (entry / "sub").mkdir(parents=True)
    (entry / "a.bin").write_bytes(b"\x00\x01\x02")
    (entry / "sub" / "b.json").write_text("{}")
    write_manifest(entry)
    assert cache_damage(entry) is None
    (entry / "a.bin").write_bytes(b"\x00\x01\x03")
    assert cache_damage(entry) == "a.bin changed since it was written"
    (entry / "a.bin").unlink()
    assert cache_damage(entry) == "a.bin is missing"
    (entry / MANIFEST).unlink()
    assert "missing or unreadable" in cache_damage(entry)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _change_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one value: an id that still fits the vocabulary
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_cache_entries_are_rebuilt_and_give_the_clean_metrics(tmp_path, corpus_dir):
    cache = tmp_path / "cache"
    command = ["experiment=text_classification", "data=text_classification_files",
               f"data.train_files=[{corpus_dir / 'cls_train.jsonl'}]", f"data.val_files=[{corpus_dir / 'cls_val.jsonl'}]",
               f"data.test_files=[{corpus_dir / 'cls_test.jsonl'}]", "data.max_length=32", "data.vocab_size=300",
               *TINY_MODEL, "trainer.max_steps=6", "logger=csv"]

    def run(name: str):
        proc = run_train(command, tmp_path / name, cache=cache)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, json.loads((only_run_dir(tmp_path / name) / "results.json").read_text())["metrics"]

    _, clean = run("clean")
    [tokenized] = [p for p in (cache / "tokenized").iterdir() if p.is_dir()]
    [tokenizer] = [p for p in (cache / "tokenizers").iterdir() if p.is_dir()]
    arrow = max(tokenized.rglob("*.arrow"), key=lambda p: p.stat().st_size)
    damages = {
        "truncated": lambda: _truncate(arrow),
        "garbled": lambda: _change_one_byte(arrow),
        "deleted": lambda: (tokenizer / "tokenizer.json").unlink(),
    }
    for name, damage in damages.items():
        damage()
        proc, metrics = run(name)
        log = proc.stdout + proc.stderr
        assert "is damaged" in log and "building it again" in log, name
        assert metrics["test/acc"] == clean["test/acc"] and metrics["test/loss"] == clean["test/loss"], name
        assert cache_damage(tokenized) is None and cache_damage(tokenizer) is None  # rebuilt whole
