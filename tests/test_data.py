"""headstart.data in process: file formats, tokenizer training, packing, the tokenized-data cache,
labelled data, user errors and the builtin data sets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import TOPICS, make_sentence, write_corpus, write_labeled

from headstart.data import builtin
from headstart.data.text_classification import TextClassificationDataModule
from headstart.data.text_lm import TextLMDataModule
from headstart.errors import ConfigError, DataError

LABELS = sorted(TOPICS)


def varied_lines(n: int, seed: int, min_words: int = 3, max_words: int = 20) -> list[str]:
    """Sentences of the synthetic language with lengths between ``min_words`` and ``max_words``."""
    rng = random.Random(seed)
    return [make_sentence(rng, rng.choice(LABELS), rng.randint(min_words, max_words)) for _ in range(n)]


def write_lines(path: Path, lines: list[str], column: str = "body") -> Path:
    """``lines`` as a .txt, .jsonl, .csv or .parquet file (text in ``column``, beside an id column)."""
    suffix = path.suffix
    if suffix == ".txt":
        path.write_text("\n".join(lines) + "\n")
    else:
        frame = pd.DataFrame({"id": range(len(lines)), column: lines})
        if suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            raise ValueError(suffix)
    return path


def lm_module(tmp: Path, train: list, val: list | None = None, **kwargs) -> TextLMDataModule:
    settings = {"max_length": 32, "vocab_size": 200, "batch_size": 8, "data_dir": str(tmp),
                "cache_dir": str(tmp / "cache"), "seed": 0, **kwargs}
    return TextLMDataModule(train_files=[str(p) for p in train], val_files=[str(p) for p in val or []], **settings)


def cls_module(tmp: Path, train: list, val: list | None = None, **kwargs) -> TextClassificationDataModule:
    settings = {"max_length": 32, "vocab_size": 200, "batch_size": 8, "data_dir": str(tmp),
                "cache_dir": str(tmp / "cache"), "seed": 0, **kwargs}
    return TextClassificationDataModule(train_files=[str(p) for p in train], val_files=[str(p) for p in val or []],
                                        **settings)


def ids(dataset) -> list[list[int]]:
    return [row.tolist() for row in dataset["input_ids"]]


def labels(dataset) -> list[int]:
    return [int(y) for y in dataset["labels"]]


# -- formats, tokenizer, packing --------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_reads_each_format_and_trains_a_tokenizer(tmp_path, suffix):
    train_lines, val_lines = varied_lines(120, seed=0), varied_lines(20, seed=1)
    train = write_lines(tmp_path / f"train{suffix}", train_lines)
    val = write_lines(tmp_path / f"val{suffix}", val_lines)
    # .txt has no columns; the others keep their text in "body".
    dm = lm_module(tmp_path, [train], [val], packing="lines", max_length=64, vocab_size=300,
                   **({} if suffix == ".txt" else {"text_column": "body"}))
    dm.prepare()

    tok = dm.tokenizer
    assert tok is not None and tok.mask_token == "[MASK]" and tok.pad_token == "[PAD]"
    assert len(tok) <= 300
    assert list((tmp_path / "cache" / "tokenizers").iterdir()), "the trained tokenizer was not saved to the cache"
    assert dm.loaded_from_cache is False
    # The vocabulary is learnt from the corpus: each word of the synthetic language is a single token.
    for word in TOPICS["sailing"] + ["the", "with"]:
        assert tok.tokenize(word) == [word]

    for split, lines in (("train", train_lines), ("validation", val_lines)):
        ds = dm.datasets[split]
        assert len(ds) == len(lines)
        for row, line in zip(ids(ds), lines, strict=True):
            assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id
            assert tok.decode(row, skip_special_tokens=True) == line


def test_block_packing_gives_full_blocks_of_the_concatenated_text(tmp_path):
    lines = varied_lines(150, seed=3)
    train = write_lines(tmp_path / "train.txt", lines)
    val = write_corpus(tmp_path / "val.txt", 20, seed=4)
    dm = lm_module(tmp_path, [train], [val], packing="blocks", max_length=24)
    dm.prepare()

    for split in ("train", "validation"):
        ds = dm.datasets[split]
        assert len(ds) > 0
        assert all(len(row) == 24 for row in ids(ds)), f"{split} has a block that is not max_length long"
        assert all(bool(mask.all()) for mask in ds["attention_mask"])

    # The blocks are the tokenized lines, concatenated in order and cut; only the tail is dropped.
    stream = [t for line in lines for t in dm.tokenizer(line)["input_ids"]]
    blocks = [t for row in ids(dm.datasets["train"]) for t in row]
    assert len(blocks) == len(stream) // 24 * 24
    assert blocks == stream[: len(blocks)]
    # Blocks cross line boundaries: some block holds a [SEP] that is not at its end.
    assert any(dm.tokenizer.sep_token_id in row[:-1] for row in ids(dm.datasets["train"]))


def test_line_packing_keeps_one_example_per_line(tmp_path):
    lines = varied_lines(100, seed=5, min_words=2, max_words=16)
    train = write_lines(tmp_path / "train.txt", lines)
    val = write_lines(tmp_path / "val.txt", varied_lines(10, seed=6))
    dm = lm_module(tmp_path, [train], [val], packing="lines", max_length=10, vocab_size=300)
    dm.prepare()

    tok, rows = dm.tokenizer, ids(dm.datasets["train"])
    assert len(rows) == len(lines)
    assert any(len(line.split()) > 8 for line in lines) and any(len(line.split()) <= 8 for line in lines)
    for row, line in zip(rows, lines, strict=True):
        n_words = len(line.split())
        assert len(row) == min(n_words + 2, 10)  # one token a word, plus [CLS] and [SEP]
        assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id
        assert tok.decode(row, skip_special_tokens=True) == " ".join(line.split()[: len(row) - 2])
    masks = [m.tolist() for m in dm.datasets["train"]["special_tokens_mask"]]
    assert all(m[0] == 1 and m[-1] == 1 and sum(m) == 2 for m in masks)


def test_bpe_tokenizer(tmp_path):
    lines = varied_lines(120, seed=7)
    train = write_lines(tmp_path / "train.txt", lines)
    val = write_lines(tmp_path / "val.txt", varied_lines(30, seed=8))
    dm = lm_module(tmp_path, [train], [val], tokenizer_type="bpe", vocab_size=400, max_length=16)
    dm.prepare()
    tok = dm.tokenizer
    assert (tok.mask_token, tok.pad_token, tok.bos_token, tok.eos_token) == ("<mask>", "<pad>", "<s>", "</s>")
    assert tok.cls_token is None
    assert all(len(row) == 16 for row in ids(dm.datasets["train"]))

    enc = tok(lines[0])["input_ids"]
    assert enc[0] == tok.bos_token_id and enc[-1] == tok.eos_token_id
    assert tok.decode(enc, skip_special_tokens=True).strip() == lines[0]

    lines_dm = lm_module(tmp_path, [train], [val], tokenizer_type="bpe", vocab_size=400, max_length=64,
                         packing="lines")
    lines_dm.prepare()
    assert lines_dm.tokenizer.get_vocab() == tok.get_vocab()  # the same trained tokenizer, from the cache
    assert len(lines_dm.datasets["train"]) == len(lines)


def test_tokenized_data_cache_hit_and_misses(tmp_path):
    train = write_corpus(tmp_path / "train.txt", 200, seed=0)
    val = write_corpus(tmp_path / "val.txt", 30, seed=1)
    first = lm_module(tmp_path, [train], [val])
    first.prepare()
    assert first.loaded_from_cache is False

    again = lm_module(tmp_path, [train], [val])
    again.prepare()
    assert again.loaded_from_cache is True
    for split in ("train", "validation"):
        assert ids(again.datasets[split]) == ids(first.datasets[split])

    longer = lm_module(tmp_path, [train], [val], max_length=48)
    longer.prepare()
    assert longer.loaded_from_cache is False
    assert all(len(row) == 48 for row in ids(longer.datasets["train"]))

    lines = lm_module(tmp_path, [train], [val], packing="lines")
    lines.prepare()
    assert lines.loaded_from_cache is False

    # Changing the file's contents misses the cache too.
    with train.open("a") as f:
        f.write("cat the dog and a fish in the boat\n")
    changed = lm_module(tmp_path, [train], [val])
    changed.prepare()
    assert changed.loaded_from_cache is False


def test_given_tokenizer_is_used_not_trained(tmp_path):
    train = write_corpus(tmp_path / "train.txt", 150, seed=0)
    val = write_corpus(tmp_path / "val.txt", 20, seed=1)
    trained = lm_module(tmp_path, [train], [val], vocab_size=150)
    trained.prepare()
    saved = tmp_path / "my_tokenizer"
    trained.tokenizer.save_pretrained(str(saved))

    for dm, source in ((lm_module(tmp_path, [train], [val], vocab_size=400, tokenizer=str(saved)), None),
                       (lm_module(tmp_path, [train], [val], vocab_size=400), str(saved))):
        dm.prepare(source)
        assert dm.tokenizer.get_vocab() == trained.tokenizer.get_vocab()
        assert ids(dm.datasets["train"]) == ids(trained.datasets["train"])


def test_tokenizer_cache_depends_on_text_column(tmp_path):
    # Two text columns with disjoint words: a tokenizer trained on one must not be reused for the other.
    rows = [{"a": "alpha beta gamma delta " * 3, "b": "zulu yankee xray whiskey " * 3} for _ in range(50)]
    path = tmp_path / "two_columns.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for column, words in (("a", "alpha beta"), ("b", "zulu yankee")):
        dm = lm_module(tmp_path, [path], packing="lines", text_column=column, vocab_size=100)
        dm.prepare()
        assert dm.tokenizer.tokenize(words) == words.split(), f"tokenizer for column {column!r} is not trained on it"


def test_validation_split_is_carved_from_train_when_not_given(tmp_path):
    lines = varied_lines(200, seed=9)
    train = write_lines(tmp_path / "train.txt", lines)
    dm = lm_module(tmp_path, [train], packing="lines", max_length=64, vocab_size=300, val_fraction=0.25)
    dm.prepare()
    assert len(dm.datasets["validation"]) == 50 and len(dm.datasets["train"]) == 150
    decoded = {split: {dm.tokenizer.decode(r, skip_special_tokens=True) for r in ids(dm.datasets[split])}
               for split in ("train", "validation")}
    assert decoded["train"] | decoded["validation"] == set(lines)


# -- labelled data ------------------------------------------------------------------------------


def test_classification_labels_map_to_ids(tmp_path):
    train = write_labeled(tmp_path / "train.jsonl", 120, seed=2)
    val = write_labeled(tmp_path / "val.jsonl", 30, seed=3)
    dm = cls_module(tmp_path, [train], [val])
    dm.prepare()
    assert dm.label_names == LABELS
    assert dm.task_kwargs() == {"num_labels": 3, "label_names": LABELS}
    for split, path in (("train", train), ("validation", val)):
        raw = [json.loads(line) for line in path.read_text().splitlines()]
        ds = dm.datasets[split]
        assert labels(ds) == [LABELS.index(r["label"]) for r in raw]
        for row, r in zip(ids(ds), raw, strict=True):
            assert dm.tokenizer.decode(row, skip_special_tokens=True) == r["text"]


def test_classification_columns_and_integer_labels_from_csv(tmp_path):
    rng = random.Random(0)
    frames = {}
    for split, n in (("train", 90), ("val", 20)):
        topics = [rng.randrange(3) for _ in range(n)]
        frames[split] = pd.DataFrame({"sentence": [make_sentence(rng, LABELS[t], 8) for t in topics],
                                      "topic": [t * 10 for t in topics]})
        frames[split].to_csv(tmp_path / f"{split}.csv", index=False)
    dm = cls_module(tmp_path, [tmp_path / "train.csv"], [tmp_path / "val.csv"], text_column="sentence",
                    label_column="topic")
    dm.prepare()
    assert dm.label_names == ["0", "10", "20"]
    assert labels(dm.datasets["validation"]) == [t // 10 for t in frames["val"]["topic"]]


def test_unseen_label_in_validation_is_an_error(tmp_path):
    train = write_labeled(tmp_path / "train.jsonl", 60, seed=2)
    val = write_labeled(tmp_path / "val.jsonl", 10, seed=3)
    with val.open("a") as f:
        f.write(json.dumps({"text": "the stars and the moon at night", "label": "astronomy"}) + "\n")
    dm = cls_module(tmp_path, [train], [val])
    with pytest.raises(DataError, match="astronomy") as info:
        dm.prepare()
    assert "validation" in str(info.value)


def test_single_label_is_an_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"cat dog {i}", "label": "animals"}) + "\n" for i in range(20)))
    with pytest.raises(DataError, match="single label"):
        cls_module(tmp_path, [path]).prepare()


def test_label_fraction_keeps_a_share_of_training_rows(tmp_path):
    train = write_labeled(tmp_path / "train.jsonl", 240, seed=2)
    val = write_labeled(tmp_path / "val.jsonl", 40, seed=3)
    full = cls_module(tmp_path, [train], [val])
    full.prepare()
    part = cls_module(tmp_path, [train], [val], label_fraction=0.25)
    part.prepare()
    assert len(full.datasets["train"]) == 240
    assert len(part.datasets["train"]) == 60
    assert len(part.datasets["validation"]) == 40  # only training labels are thinned

    def pairs(ds) -> set:
        return set(zip(map(tuple, ids(ds)), labels(ds), strict=True))

    assert pairs(part.datasets["train"]) <= pairs(full.datasets["train"])
    assert part.task_kwargs()["num_labels"] == 3

    with pytest.raises(ConfigError, match="label_fraction"):
        cls_module(tmp_path, [train], [val], label_fraction=0.0)


# -- user errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        lm_module(tmp_path, [missing]).prepare()
    assert str(missing) in str(info.value)


def test_missing_validation_file(tmp_path):
    train = write_corpus(tmp_path / "train.txt", 50, seed=0)
    missing = tmp_path / "val_missing.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        lm_module(tmp_path, [train], [missing]).prepare()
    assert str(missing) in str(info.value) and "val" in str(info.value)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty") as info:
        lm_module(tmp_path, [empty]).prepare()
    assert str(empty) in str(info.value)


def test_blank_file(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no non-empty text") as info:
        lm_module(tmp_path, [blank]).prepare()
    assert str(blank) in str(info.value)


def test_unknown_suffix(tmp_path):
    odd = tmp_path / "corpus.xml"
    odd.write_text("<doc>cat dog</doc>\n")
    with pytest.raises(DataError, match=r"'\.xml'") as info:
        lm_module(tmp_path, [odd]).prepare()
    assert str(odd) in str(info.value)


def test_missing_text_column(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", varied_lines(20, seed=0), column="body")
    with pytest.raises(DataError, match="no column 'text'") as info:
        lm_module(tmp_path, [path]).prepare()
    assert str(path) in str(info.value) and "body" in str(info.value)


def test_missing_label_column(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", varied_lines(20, seed=0), column="text")
    with pytest.raises(DataError, match="no column 'label'") as info:
        cls_module(tmp_path, [path]).prepare()
    assert str(path) in str(info.value)


def test_text_shorter_than_one_block(tmp_path):
    short = write_lines(tmp_path / "train.txt", ["cat dog"] * 4)
    with pytest.raises(DataError, match="fewer than one block"):
        lm_module(tmp_path, [short], [short], max_length=64).prepare()


def test_bad_settings_are_config_errors(tmp_path):
    train = write_corpus(tmp_path / "train.txt", 20, seed=0)
    with pytest.raises(ConfigError, match="packing"):
        lm_module(tmp_path, [train], packing="sentences")
    with pytest.raises(ConfigError, match="val_fraction"):
        lm_module(tmp_path, [train], val_fraction=1.0)
    with pytest.raises(ConfigError, match="No training data"):
        lm_module(tmp_path, [])
    with pytest.raises(ConfigError, match="tokenizer_type"):
        lm_module(tmp_path, [train], tokenizer_type="unigram").prepare()


# -- builtin data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    return {name: builtin.materialize(name, str(root)) for name in ("pydoc_topics_cls", "python_docs")}


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_builtin_labelled_set_has_five_labels(builtin_files):
    files = builtin_files["pydoc_topics_cls"]
    assert set(files) == {"train", "validation", "test"}
    expected = {"statement", "expression", "data_model", "builtin_type", "execution"}
    texts = {}
    for split, paths in files.items():
        rows = read_jsonl(paths[0])
        assert len(rows) > 50, split
        assert {r["label"] for r in rows} == expected, split
        texts[split] = {r["text"] for r in rows}
    # The splits are disjoint.
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_builtin_pretraining_corpus_never_holds_test_paragraphs(builtin_files):
    docs = builtin_files["python_docs"]
    train_text = Path(docs["train"][0]).read_text()
    train_lines = set(train_text.splitlines())
    labelled = builtin_files["pydoc_topics_cls"]
    test_texts = [r["text"] for r in read_jsonl(labelled["test"][0])]
    val_texts = [r["text"] for r in read_jsonl(labelled["validation"][0])]
    train_texts = [r["text"] for r in read_jsonl(labelled["train"][0])]

    assert len(train_lines) > 2 * len(train_texts)  # the stdlib docstrings are there too
    assert all(t in train_lines for t in train_texts)  # the labelled training paragraphs are pretraining text
    leaked = [t for t in test_texts if t in train_text]
    assert not leaked, f"{len(leaked)} test paragraphs appear in the pretraining corpus, e.g. {leaked[0][:80]!r}"
    assert not [t for t in val_texts if t in train_lines]
    assert not set(Path(docs["validation"][0]).read_text().splitlines()) & train_lines


def test_builtin_is_written_once_and_unknown_names_are_refused(builtin_files, tmp_path):
    path = Path(builtin_files["pydoc_topics_cls"]["test"][0])
    before = path.stat().st_mtime_ns
    again = builtin.materialize("pydoc_topics_cls", str(path.parents[2]))
    assert again == builtin_files["pydoc_topics_cls"]
    assert path.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="pydoc_topics_cls"):
        builtin.materialize("pydoc_topic", str(tmp_path))


def test_builtin_data_module(builtin_files, tmp_path):
    data_dir = Path(builtin_files["pydoc_topics_cls"]["train"][0]).parents[2]
    dm = TextClassificationDataModule(builtin="pydoc_topics_cls", max_length=32, vocab_size=500,
                                      data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), seed=0)
    dm.prepare()
    assert dm.task_kwargs()["num_labels"] == 5
    assert dm.has_test
    assert len(dm.datasets["test"]) == len(read_jsonl(builtin_files["pydoc_topics_cls"]["test"][0]))
